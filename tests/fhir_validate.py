#!/usr/bin/env python3
"""Independent HL7 FHIR R4 (4.0.1) validator for the gateway's output.

The end-to-end tests run this script over the JSON files the gateway writes.
It does not share any code with the Rust gateway, so a mistake in the
gateway's FHIR mapping cannot be hidden by the same mistake in the check.

Usage::

    python tests/fhir_validate.py DIR_OR_FILE [DIR_OR_FILE ...]
    python tests/fhir_validate.py --observations-array FILE [...]

Every ``*.json`` file found (directories are searched recursively; a file
named explicitly is read whatever its name) must hold a FHIR R4 Bundle of
type ``transaction`` whose entries are Device and Observation resources.
``--observations-array FILE`` (may be repeated) names a file holding a JSON
array of Observation resources, e.g. the output of ``profile test``; each
Observation is checked exactly like one inside a Bundle, minus the checks
that need the Bundle (request, fullUrl, Device resolution).

Why both a schema library and hand-written rules?  ``fhir.resources`` 6.1.0
(pydantic v1 models generated from the R4 StructureDefinitions) catches
structural errors: unknown elements, wrong JSON types, missing required
elements, bad ``id``/``instant`` formats, choice-type conflicts.  It does not
check terminology bindings, most invariants or profiles, so the rules the
gateway must honour are written out here:

1. Schema: the whole Bundle is parsed with ``fhir.resources`` (R4) and each
   entry's resource with its own model (Observation, Device); any error is a
   failure and its text is reported.  The raw JSON must also be valid FHIR
   JSON: no duplicate keys, no NaN/Infinity, no ``null`` outside arrays, no
   empty strings, arrays or objects.
2. Observation:
   - ``status`` present and an R4 ObservationStatus code; ``subject`` has a
     ``reference`` or an ``identifier``; ``effectiveDateTime`` present, a
     valid FHIR dateTime and, as it carries a time, a timezone (``Z`` or
     ``+hh:mm``/``-hh:mm``); ``issued`` present, a valid instant with a
     timezone.
   - ``identifier``: at least one entry with ``system`` and ``value``.
   - ``code.coding``: one coding with system ``http://loinc.org`` and a code
     matching ``^\\d{1,7}-\\d$`` whose LOINC check digit is right (or, for
     a device measurement LOINC has no code for -- the battery charge, MDC
     67996 -- that MDC coding, no vital-signs category and its unit ``%``); every
     coding (of code, category and component codes) has a ``system``; ISO/IEEE
     11073 codes (``urn:iso:std:iso:11073:10101``) are decimal digits.
   - Vital signs (category ``vital-signs`` of
     ``http://terminology.hl7.org/CodeSystem/observation-category``): the R4
     Vital Signs profile rules -- every LOINC code is in the vital-signs value
     set (the body-temperature site codes are accepted next to 8310-5 only),
     there is a valueQuantity, component, dataAbsentReason or hasMember, and
     each valueQuantity uses the profile's UCUM unit for its code.
     Conversely, an Observation whose code is a vital-signs LOINC must carry
     the vital-signs category (R4 makes the profile mandatory for them).
   - Blood-pressure panel (LOINC 85354-9): no value[x] of its own, and
     components with LOINC 8480-6 and 8462-4, each with a valueQuantity or a
     dataAbsentReason.
   - Every valueQuantity (Observation and components) has ``value``,
     ``unit``, ``system`` = ``http://unitsofmeasure.org`` and ``code``.
   - value[x] and dataAbsentReason are never both present (invariant obs-6,
     Observation and each component); a dataAbsentReason coding uses the
     system ``http://terminology.hl7.org/CodeSystem/data-absent-reason`` and
     one of its codes.  A component whose code equals the Observation's code
     is not allowed while the Observation has a value (obs-7).
   - Glucose LOINCs never carry the vital-signs category and use ``mg/dL``
     (mass concentration codes) or ``mmol/L`` (substance concentration codes).
   - ``device.reference`` present and of type Device (or DeviceMetric).
     Within a Bundle, a ``Device/<id>``, ``urn:uuid:``/``urn:oid:`` or
     conditional ``Device?identifier=...`` reference must resolve to a Device
     entry of the same Bundle (by ``resource.id``, ``fullUrl`` or identifier).
3. Device: at least one ``identifier`` with ``system`` and ``value``.
4. Bundle: ``resourceType`` Bundle and ``type`` transaction; each entry has a
   unique ``fullUrl`` (a well-formed lower-case ``urn:uuid:`` when it is
   one), a ``resource`` and ``request.method`` (an R4 HTTP verb) and
   ``request.url`` (the resource type for POST); Observation entries sent
   with POST have ``request.ifNoneExist`` and, when it is an
   ``identifier=`` query, it names one of the Observation's identifiers.  No
   two Observations share an identifier (``system|value``) within a Bundle
   or across all the Bundle files given; an observations array is checked
   for duplicates within itself.

Output: one line per problem, ``PATH: entry N (Observation id X): problem``
(entries are numbered from 0, as in FHIRPath and in pydantic's error
locations; problems of the file or Bundle itself read ``PATH: bundle: ...``
or ``PATH: ...``), then the summary line ``fhir-validate: N passed, M
failed``.  N and M count resources (Bundle entries / array items); a file or
Bundle with a problem of its own counts as one more failure.  The exit status
is 1 when anything failed or when no Observation was found at all, 2 for a
usage or installation error, and 0 otherwise.

Requirements: Python >= 3.9, ``fhir.resources==6.1.0`` and
``pydantic==1.10.27`` (fhir.resources 6.x is the last line built on FHIR R4
4.0.1; later releases default to R5 and pydantic v2).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple
from urllib.parse import unquote

try:
    import fhir.resources
    import pydantic
    from fhir.resources.bundle import Bundle
    from fhir.resources.device import Device
    from fhir.resources.observation import Observation
except ImportError as exc:  # pragma: no cover - environment problem
    sys.stderr.write(
        f"fhir-validate: cannot import the validator library ({exc}).\n"
        "Install it with: pip install 'fhir.resources==6.1.0' 'pydantic==1.10.27'\n"
    )
    sys.exit(2)

# fhir.resources >= 7 ships R5 models under the same module names; validating
# against R5 by accident would accept and reject the wrong things.
if getattr(fhir.resources, "__fhir_version__", None) != "4.0.1":  # pragma: no cover
    sys.stderr.write(
        "fhir-validate: fhir.resources "
        f"{getattr(fhir.resources, '__version__', '?')} implements FHIR "
        f"{getattr(fhir.resources, '__fhir_version__', '?')}, not R4 4.0.1; "
        "install fhir.resources==6.1.0 and pydantic==1.10.27\n"
    )
    sys.exit(2)


# --------------------------------------------------------------------------
# Terminology and constants
# --------------------------------------------------------------------------

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ISO_11073 = "urn:iso:std:iso:11073:10101"
# Device measurements LOINC has no code for, identified by their MDC code alone (PHD IG),
# with the unit each must carry: the battery charge MDC_ATTR_VAL_BATT_CHARGE in %.
DEVICE_MDC_UNITS = {"67996": "%"}
# The PHD IG's Coincident Time Stamp Observation (PhdCoincidentTimeStampObservation): MDC
# 67975 MDC_ATTR_TIME_ABS, the PHD's time in valueDateTime (with a timezone), the PHG's
# time in effectiveDateTime, the observation-gatewayDevice extension; measurements refer
# to it with the CoincidentTimeStampReference extension.
CTS_PROFILE = "http://hl7.org/fhir/uv/phd/StructureDefinition/PhdCoincidentTimeStampObservation"
CTS_CODES = {"67975"}
CTS_REFERENCE = "http://hl7.org/fhir/uv/phd/StructureDefinition/CoincidentTimeStampReference"
GATEWAY_DEVICE = "http://hl7.org/fhir/StructureDefinition/observation-gatewayDevice"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DATA_ABSENT_REASON = "http://terminology.hl7.org/CodeSystem/data-absent-reason"

LOINC_CODE_RE = re.compile(r"^\d{1,7}-\d$")
MDC_CODE_RE = re.compile(r"^\d+$")

# FHIR R4 primitive formats (http://hl7.org/fhir/R4/datatypes.html).  The
# dateTime pattern is split so that a missing timezone gets its own message.
_YEAR = r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)"
_MONTH = r"(0[1-9]|1[0-2])"
_DAY = r"(0[1-9]|[1-2][0-9]|3[0-1])"
_TIME = r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]+)?"
_TZ = r"(Z|(\+|-)((0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
DATE_ONLY_RE = re.compile(rf"^{_YEAR}(-{_MONTH}(-{_DAY})?)?$")
DATETIME_WITH_TIME_RE = re.compile(rf"^{_YEAR}-{_MONTH}-{_DAY}T{_TIME}(?P<tz>{_TZ})?$")
INSTANT_RE = re.compile(rf"^{_YEAR}-{_MONTH}-{_DAY}T{_TIME}{_TZ}$")
CODE_RE = re.compile(r"^[^\s]+( [^\s]+)*$")  # FHIR `code`: no leading/trailing/double blanks
UUID_URN_RE = re.compile(r"^urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
RELATIVE_REF_RE = re.compile(r"^(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(/_history/[A-Za-z0-9\-.]{1,64})?$")

# Required bindings that fhir.resources 6.1.0 does not enforce.
OBSERVATION_STATUS = {
    "registered", "preliminary", "final", "amended", "corrected",
    "cancelled", "entered-in-error", "unknown",
}
HTTP_VERBS = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"}
DATA_ABSENT_REASON_CODES = {
    "unknown", "asked-unknown", "temp-unknown", "not-asked", "asked-declined",
    "masked", "not-applicable", "unsupported", "as-text", "error",
    "not-a-number", "negative-infinity", "positive-infinity", "not-performed",
    "not-permitted",
}

# FHIR R4 Vital Signs profile (http://hl7.org/fhir/R4/observation-vitalsigns.html).
VITAL_SIGNS_CODES = {
    "85353-1",  # vital signs panel
    "9279-1",   # respiratory rate
    "8867-4",   # heart rate
    "2708-6",   # oxygen saturation in arterial blood
    "59408-5",  # oxygen saturation by pulse oximetry
    "8310-5",   # body temperature
    "8302-2",   # body height
    "9843-4",   # head circumference
    "29463-7",  # body weight
    "39156-5",  # body mass index
    "85354-9",  # blood pressure panel
    "8480-6",   # systolic blood pressure
    "8462-4",   # diastolic blood pressure
    "8478-0",   # mean blood pressure
}
BODY_TEMPERATURE = "8310-5"
# Temperature-by-site codes: accepted only as additional codings next to 8310-5.
BODY_TEMPERATURE_SITE_CODES = {"8328-7", "8331-1", "8332-9", "8333-7", "76011-6"}
BP_PANEL = "85354-9"
BP_SYSTOLIC = "8480-6"
BP_DIASTOLIC = "8462-4"

# UCUM codes the Vital Signs profile allows for each code's valueQuantity.
VITAL_SIGNS_UNITS: Dict[str, Tuple[str, ...]] = {
    "8867-4": ("/min",),
    "9279-1": ("/min",),
    "2708-6": ("%",),
    "59408-5": ("%",),
    "8310-5": ("Cel", "[degF]"),
    "29463-7": ("kg", "g", "[lb_av]"),
    "8302-2": ("cm", "[in_i]"),
    "9843-4": ("cm", "[in_i]"),
    "39156-5": ("kg/m2",),
    "8480-6": ("mm[Hg]",),
    "8462-4": ("mm[Hg]",),
    "8478-0": ("mm[Hg]",),
}

# Glucose is laboratory data, never a vital sign.
GLUCOSE_MASS_CODES = {"41653-7", "2339-0", "2345-7", "99504-3"}   # mg/dL
GLUCOSE_MOLES_CODES = {"14743-9", "15074-8", "14749-6"}           # mmol/L
GLUCOSE_UNITS: Dict[str, Tuple[str, ...]] = {
    **{c: ("mg/dL",) for c in GLUCOSE_MASS_CODES},
    **{c: ("mmol/L",) for c in GLUCOSE_MOLES_CODES},
}

# Resource types the gateway may put into a Bundle, with their R4 models.
MODELS = {"Observation": Observation, "Device": Device}


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------

def as_dict(value: Any) -> Dict[str, Any]:
    """`value` if it is a JSON object, else an empty dict (schema errors are
    reported by fhir.resources; the rule checks below must just not crash)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> List[Any]:
    """`value` if it is a JSON array, else an empty list."""
    return value if isinstance(value, list) else []


def is_set(value: Any) -> bool:
    """True for a present, non-empty JSON value (0 and false count as set)."""
    return value is not None and value != "" and value != [] and value != {}


def codings(concept: Any) -> List[Dict[str, Any]]:
    """The codings of a CodeableConcept, skipping malformed items."""
    return [c for c in as_list(as_dict(concept).get("coding")) if isinstance(c, dict)]


def codes_of(concept: Any, system: str) -> List[str]:
    """All code strings in `concept` whose coding system is `system`."""
    return [c["code"] for c in codings(concept)
            if c.get("system") == system and isinstance(c.get("code"), str)]


def loinc_check_digit_ok(code: str) -> bool:
    """Verify the LOINC mod-10 check digit (the Luhn algorithm over the part
    before the dash).  Catches typos such as 8867-5 for heart rate."""
    number, check = code.split("-")
    total = 0
    for position, char in enumerate(reversed(number)):
        digit = int(char)
        if position % 2 == 0:  # 1st, 3rd, ... digit from the right is doubled
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10 == int(check)


def value_keys(element: Dict[str, Any]) -> List[str]:
    """The value[x] properties present on an Observation or component."""
    return [k for k in element if re.match(r"^value[A-Z]", k)]


def format_loc(loc: Iterable[Any]) -> str:
    """Render a pydantic error location without the `__root__` noise."""
    parts = [str(p) for p in loc if p != "__root__"]
    return " -> ".join(parts) if parts else "(resource)"


def format_pydantic(exc: Exception) -> List[Tuple[Tuple[Any, ...], str]]:
    """Turn a fhir.resources failure into (location, message) pairs."""
    if isinstance(exc, pydantic.ValidationError):
        return [(tuple(e.get("loc", ())), str(e.get("msg", ""))) for e in exc.errors()]
    # fhir.resources raises plain exceptions for some inputs (e.g. LookupError
    # for an unknown resourceType); report them rather than crash.
    return [((), f"{type(exc).__name__}: {exc}")]


class DuplicateKeyError(ValueError):
    pass


def _reject_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """json object hook: FHIR JSON forbids repeating a property name."""
    result: Dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(f"duplicate JSON property {key!r}")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_json(path: Path) -> Any:
    """Parse strict JSON; decimals are kept exact (the gateway writes exact
    decimals and fhir.resources models them as Decimal)."""
    with path.open("r", encoding="utf-8") as handle:
        return json.load(
            handle,
            parse_float=Decimal,
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )


def json_hygiene(value: Any, where: str = "") -> List[str]:
    """FHIR JSON rules the models do not enforce: no null outside arrays (null
    is only allowed to align primitive arrays with their `_x` extensions), no
    empty strings, arrays or objects (ele-1 / the string type's pattern)."""
    problems: List[str] = []
    if isinstance(value, dict):
        if not value:
            problems.append(f"{where or 'resource'}: empty JSON object is not allowed")
        for key, child in value.items():
            path = f"{where}.{key}" if where else key
            if child is None:
                problems.append(f"{path}: null is not allowed")
            else:
                problems.extend(json_hygiene(child, path))
    elif isinstance(value, list):
        if not value:
            problems.append(f"{where}: empty JSON array is not allowed")
        for index, child in enumerate(value):
            if child is not None:
                problems.extend(json_hygiene(child, f"{where}[{index}]"))
    elif isinstance(value, str) and value.strip() == "":
        problems.append(f"{where}: empty or blank string is not allowed")
    return problems


# --------------------------------------------------------------------------
# Result bookkeeping
# --------------------------------------------------------------------------

class Item:
    """One validated resource (a Bundle entry or an array item) and the
    problems found in it."""

    def __init__(self, path: str, index: int, resource: Any):
        self.path = path
        self.index = index
        self.resource = as_dict(resource)
        self.rtype = str(self.resource.get("resourceType") or "resource")
        self.problems: List[str] = []

    @property
    def label(self) -> str:
        rid = self.resource.get("id")
        rid = rid if isinstance(rid, str) and rid else "<none>"
        return f"{self.path}: entry {self.index} ({self.rtype} id {rid})"

    def fail(self, problem: str) -> None:
        self.problems.append(problem)


class Validator:
    """Collects problems over all files; `run()` prints them and the summary."""

    def __init__(self) -> None:
        self.items: List[Item] = []
        # Problems of a file or Bundle not attributable to one entry; each
        # (path) with such problems counts as one failed unit.
        self.file_problems: Dict[str, List[str]] = {}
        # identifier "system|value" -> where it was first seen, across Bundles
        self.bundle_identifiers: Dict[str, str] = {}
        self.observation_count = 0

    def file_fail(self, path: str, problem: str) -> None:
        self.file_problems.setdefault(path, []).append(problem)

    # ---------------------------------------------------------------- inputs

    def validate_bundle_file(self, path: Path) -> None:
        label = str(path)
        try:
            data = load_json(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.file_fail(label, f"cannot read JSON: {exc}")
            return
        if not isinstance(data, dict) or data.get("resourceType") != "Bundle":
            found = data.get("resourceType") if isinstance(data, dict) else type(data).__name__
            self.file_fail(label, f"bundle: expected a FHIR Bundle, found {found!r}")
            return
        self.validate_bundle(label, data)

    def validate_array_file(self, path: Path) -> None:
        label = str(path)
        try:
            data = load_json(path)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.file_fail(label, f"cannot read JSON: {exc}")
            return
        if not isinstance(data, list):
            self.file_fail(label, f"expected a JSON array of Observations, found {type(data).__name__}")
            return
        seen: Dict[str, str] = {}  # duplicates are checked within the array only
        for index, resource in enumerate(data):
            item = Item(label, index, resource)
            self.items.append(item)
            if item.rtype != "Observation":
                item.fail(f"expected an Observation, found resourceType {item.rtype!r}")
                continue
            self.observation_count += 1
            self.parse_resource(item)
            self.check_observation(item)
            self.check_duplicate_identifiers(item, seen)

    # ---------------------------------------------------------------- Bundle

    def validate_bundle(self, label: str, bundle: Dict[str, Any]) -> None:
        if bundle.get("type") != "transaction":
            self.file_fail(label, f"bundle: type must be 'transaction', found {bundle.get('type')!r}")
        entries = bundle.get("entry")
        if entries is None:
            entries = []
        if not isinstance(entries, list):
            self.file_fail(label, "bundle: entry must be a JSON array")
            entries = []

        # JSON hygiene of the Bundle outside its entries' resources.
        shell = {k: v for k, v in bundle.items() if k != "entry"}
        for problem in json_hygiene(shell):
            self.file_fail(label, f"bundle: {problem}")

        items = [Item(label, i, as_dict(e).get("resource")) for i, e in enumerate(entries)]
        self.items.extend(items)
        resource_parse_failed = [False] * len(items)

        # 1. Per-entry structure and each resource with its own model.
        full_urls: Dict[str, int] = {}
        for i, (entry, item) in enumerate(zip(entries, items)):
            if not isinstance(entry, dict):
                item.fail("entry is not a JSON object")
                continue
            self.check_entry(entry, item, full_urls)
            if item.rtype == "Observation":
                self.observation_count += 1
            if item.rtype in MODELS:
                resource_parse_failed[i] = not self.parse_resource(item)

        # 1b. The whole Bundle with the R4 Bundle model.  Errors inside an
        # entry's resource were already reported by that resource's own model.
        known_types = all(it.rtype in MODELS for it in items)
        try:
            Bundle.parse_obj(bundle)
        except Exception as exc:  # noqa: BLE001 - fhir.resources raises more than ValidationError
            for loc, msg in format_pydantic(exc):
                if len(loc) >= 2 and loc[0] == "entry" and isinstance(loc[1], int) and loc[1] < len(items):
                    index = loc[1]
                    if len(loc) >= 3 and loc[2] == "resource" and resource_parse_failed[index]:
                        continue  # duplicate of the per-resource error
                    items[index].fail(f"fhir.resources (Bundle): {format_loc(loc)}: {msg}")
                elif not loc and not known_types and isinstance(exc, LookupError):
                    continue  # the unexpected resourceType is already reported on its entry
                else:
                    self.file_fail(label, f"bundle: fhir.resources: {format_loc(loc)}: {msg}")

        # 2./3. Resource rules.
        for item in items:
            if item.rtype == "Observation":
                self.check_observation(item)
            elif item.rtype == "Device":
                self.check_device(item)

        # Device references must point at Device entries of this Bundle.
        for item in items:
            if item.rtype == "Observation":
                self.check_device_resolution(item, entries, items)

        # 4. Observation identifiers are unique across all Bundles given.
        for item in items:
            if item.rtype == "Observation":
                self.check_duplicate_identifiers(item, self.bundle_identifiers)

    def check_entry(self, entry: Dict[str, Any], item: Item, full_urls: Dict[str, int]) -> None:
        """Bundle.entry: fullUrl, resource and request (transaction rules)."""
        full_url = entry.get("fullUrl")
        if not isinstance(full_url, str) or not full_url:
            item.fail("entry.fullUrl missing")
        else:
            if full_url.startswith("urn:uuid:") and not UUID_URN_RE.match(full_url):
                item.fail(f"entry.fullUrl {full_url!r} is not a well-formed lower-case urn:uuid")
            if full_url in full_urls:  # bdl-7
                item.fail(f"entry.fullUrl {full_url!r} already used by entry {full_urls[full_url]}")
            else:
                full_urls[full_url] = item.index

        if "resource" not in entry:
            item.fail("entry.resource missing")
        elif item.rtype not in MODELS:
            item.fail(f"unexpected resourceType {item.rtype!r} (only Device and Observation are expected)")

        request = entry.get("request")
        if not isinstance(request, dict):
            item.fail("entry.request missing (required in a transaction Bundle)")
            return
        method = request.get("method")
        url = request.get("url")
        if not is_set(method):
            item.fail("entry.request.method missing")
        elif method not in HTTP_VERBS:
            item.fail(f"entry.request.method {method!r} is not an R4 HTTP verb {sorted(HTTP_VERBS)}")
        if not is_set(url):
            item.fail("entry.request.url missing")
        elif method == "POST" and item.rtype in MODELS and url != item.rtype:
            item.fail(f"entry.request.url for POST must be the resource type {item.rtype!r}, found {url!r}")
        elif method == "PUT" and item.rtype in MODELS and not re.match(rf"^{item.rtype}[/?]", str(url)):
            item.fail(f"entry.request.url for PUT must be '{item.rtype}/<id>' or '{item.rtype}?<query>', found {url!r}")

        if item.rtype == "Observation" and method == "POST":
            if_none_exist = request.get("ifNoneExist")
            if not is_set(if_none_exist):
                item.fail("entry.request.ifNoneExist missing on a POSTed Observation "
                          "(needed so a resent Bundle does not create duplicates)")
            else:
                self.check_if_none_exist(str(if_none_exist), item)

    def check_if_none_exist(self, query: str, item: Item) -> None:
        """An `identifier=system|value` conditional create must name one of
        the Observation's own identifiers, or it would not deduplicate."""
        own = identifier_keys(item.resource)
        for part in query.split("&"):
            name, _, raw = part.partition("=")
            if name != "identifier":
                continue
            wanted = unquote(raw)
            if wanted not in own and not any(k.endswith("|" + wanted) for k in own if "|" not in wanted):
                item.fail(f"entry.request.ifNoneExist {query!r} does not match any identifier "
                          f"of the Observation ({', '.join(sorted(own)) or 'none'})")

    # -------------------------------------------------------------- resources

    def parse_resource(self, item: Item) -> bool:
        """Validate one resource with its own fhir.resources model (plus the
        FHIR JSON rules); returns False if the model rejected it."""
        model = MODELS.get(item.rtype)
        if model is None:
            return True
        ok = True
        try:
            model.parse_obj(item.resource)
        except Exception as exc:  # noqa: BLE001
            ok = False
            for loc, msg in format_pydantic(exc):
                item.fail(f"fhir.resources ({item.rtype}): {format_loc(loc)}: {msg}")
        for problem in json_hygiene(item.resource):
            item.fail(f"FHIR JSON: {problem}")
        return ok

    def check_device(self, item: Item) -> None:
        device = item.resource
        if not any(is_set(as_dict(i).get("system")) and is_set(as_dict(i).get("value"))
                   for i in as_list(device.get("identifier"))):
            item.fail("Device has no identifier with both system and value")

    def check_observation(self, item: Item) -> None:
        obs = item.resource

        # status, subject, timestamps
        status = obs.get("status")
        if not is_set(status):
            item.fail("status missing")
        elif status not in OBSERVATION_STATUS:
            item.fail(f"status {status!r} is not an R4 ObservationStatus code")
        subject = as_dict(obs.get("subject"))
        if not (is_set(subject.get("reference")) or is_set(subject.get("identifier"))):
            item.fail("subject.reference or subject.identifier missing")
        self.check_effective(obs, item)
        self.check_issued(obs, item)

        # identifier
        if not any(is_set(as_dict(i).get("system")) and is_set(as_dict(i).get("value"))
                   for i in as_list(obs.get("identifier"))):
            item.fail("identifier: no entry with both system and value")

        # code
        code = obs.get("code")
        loincs = codes_of(code, LOINC)
        device_mdc = sorted(set(codes_of(code, ISO_11073)) & set(DEVICE_MDC_UNITS))
        is_cts = CTS_PROFILE in as_list(as_dict(obs.get("meta")).get("profile"))
        if is_cts:
            self.check_coincident_time_stamp(obs, item)
        for ext in as_list(obs.get("extension")):
            ext = as_dict(ext)
            if ext.get("url") == CTS_REFERENCE:
                ref = as_dict(ext.get("valueReference"))
                if not (is_set(ref.get("reference")) or is_set(ref.get("identifier"))):
                    item.fail("CoincidentTimeStampReference without a reference or identifier")
        if not codings(code):
            item.fail("code.coding missing")
        elif is_cts:
            pass
        elif not loincs and not device_mdc:
            item.fail(f"code.coding has no LOINC ({LOINC}) coding")
        for mdc in device_mdc:
            if loincs:
                continue
            # A device measurement: not a vital sign, and in its fixed unit.
            if any(c.get("system") == OBS_CATEGORY and c.get("code") == "vital-signs"
                   for category in as_list(obs.get("category")) for c in codings(category)):
                item.fail(f"MDC {mdc} is a device measurement, not a vital sign")
            quantity = as_dict(obs.get("valueQuantity"))
            if quantity and (quantity.get("system") != UCUM
                             or quantity.get("code") != DEVICE_MDC_UNITS[mdc]):
                item.fail(f"MDC {mdc} must be in UCUM {DEVICE_MDC_UNITS[mdc]!r}")
        self.check_codings("code", code, item)
        for index, category in enumerate(as_list(obs.get("category"))):
            self.check_codings(f"category[{index}]", category, item)

        components = [as_dict(c) for c in as_list(obs.get("component"))]
        for index, component in enumerate(components):
            self.check_codings(f"component[{index}].code", component.get("code"), item)

        is_vital_sign = any(
            c.get("system") == OBS_CATEGORY and c.get("code") == "vital-signs"
            for category in as_list(obs.get("category")) for c in codings(category)
        )

        # value[x] / dataAbsentReason on the Observation and its components
        self.check_value_and_absence("", obs, item)
        for index, component in enumerate(components):
            self.check_value_and_absence(f"component[{index}].", component, item)
        # obs-7: a component repeating the Observation's code means the value
        # belongs to the component, not the Observation.
        if value_keys(obs):
            own = {(c.get("system"), c.get("code")) for c in codings(code)}
            for index, component in enumerate(components):
                if own & {(c.get("system"), c.get("code")) for c in codings(component.get("code"))}:
                    item.fail(f"component[{index}].code repeats the Observation code while the "
                              "Observation has a value (invariant obs-7)")

        if is_vital_sign:
            self.check_vital_signs(obs, loincs, components, item)
        else:
            vital = sorted(set(loincs) & VITAL_SIGNS_CODES)
            if vital:
                item.fail(f"LOINC {', '.join(vital)} is a vital sign, so category must include "
                          f"{OBS_CATEGORY}|vital-signs (R4 Vital Signs profile is mandatory)")

        if BP_PANEL in loincs:
            self.check_bp_panel(obs, components, item)

        glucose = sorted(set(loincs) & set(GLUCOSE_UNITS))
        if glucose:
            if is_vital_sign:
                item.fail(f"glucose LOINC {', '.join(glucose)} must not carry the vital-signs category")
            for loinc in glucose:
                self.check_unit("valueQuantity", obs.get("valueQuantity"), loinc,
                                GLUCOSE_UNITS[loinc], item)
        for index, component in enumerate(components):
            for loinc in codes_of(component.get("code"), LOINC):
                if loinc in GLUCOSE_UNITS:
                    self.check_unit(f"component[{index}].valueQuantity", component.get("valueQuantity"),
                                    loinc, GLUCOSE_UNITS[loinc], item)

        # device
        if not is_set(as_dict(obs.get("device")).get("reference")):
            item.fail("device.reference missing")
        else:
            ref = str(obs["device"]["reference"])
            match = RELATIVE_REF_RE.match(ref)
            if match and match.group("type") not in ("Device", "DeviceMetric"):
                item.fail(f"device.reference {ref!r} must point at a Device (or DeviceMetric)")

    def check_coincident_time_stamp(self, obs: Dict[str, Any], item: Item) -> None:
        """PhdCoincidentTimeStampObservation: code MDC 67975, the PHD's time as a
        valueDateTime with a timezone (or a dataAbsentReason), and the PHG extension."""
        if not set(codes_of(obs.get("code"), ISO_11073)) & CTS_CODES:
            item.fail(f"a Coincident Time Stamp Observation is coded MDC {sorted(CTS_CODES)}")
        value = obs.get("valueDateTime")
        if is_set(value):
            match = DATETIME_WITH_TIME_RE.match(str(value))
            if not match or not match.group("tz"):
                item.fail(f"valueDateTime {value!r} is not a dateTime with a time and a timezone")
        elif not is_set(obs.get("dataAbsentReason")):
            item.fail("a Coincident Time Stamp Observation needs valueDateTime or dataAbsentReason")
        if not any(as_dict(e).get("url") == GATEWAY_DEVICE for e in as_list(obs.get("extension"))):
            item.fail("a Coincident Time Stamp Observation names its gateway (observation-gatewayDevice)")

    def check_effective(self, obs: Dict[str, Any], item: Item) -> None:
        value = obs.get("effectiveDateTime")
        if not is_set(value):
            others = [k for k in obs if k.startswith("effective")]
            hint = f" (found {', '.join(others)})" if others else ""
            item.fail(f"effectiveDateTime missing{hint}")
            return
        if not isinstance(value, str):
            item.fail(f"effectiveDateTime {value!r} is not a string")
            return
        if DATE_ONLY_RE.match(value):
            return  # a date without a time carries no timezone in FHIR
        match = DATETIME_WITH_TIME_RE.match(value)
        if not match:
            item.fail(f"effectiveDateTime {value!r} is not a valid FHIR dateTime "
                      "(YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm))")
        elif not match.group("tz"):
            item.fail(f"effectiveDateTime {value!r} has a time but no timezone (needs Z or +hh:mm/-hh:mm)")

    def check_issued(self, obs: Dict[str, Any], item: Item) -> None:
        value = obs.get("issued")
        if not is_set(value):
            item.fail("issued missing")
        elif not isinstance(value, str):
            item.fail(f"issued {value!r} is not a string")
        elif not INSTANT_RE.match(value):
            match = DATETIME_WITH_TIME_RE.match(value)
            if match and not match.group("tz"):
                item.fail(f"issued {value!r} has no timezone (needs Z or +hh:mm/-hh:mm)")
            else:
                item.fail(f"issued {value!r} is not a valid FHIR instant "
                          "(YYYY-MM-DDThh:mm:ss[.fff](Z|+hh:mm|-hh:mm))")

    def check_codings(self, where: str, concept: Any, item: Item) -> None:
        """Every coding has a system; LOINC and ISO 11073 codes are well formed."""
        for index, coding in enumerate(codings(concept)):
            system = coding.get("system")
            code = coding.get("code")
            at = f"{where}.coding[{index}]"
            if not is_set(system):
                item.fail(f"{at} has no system")
            if code is not None and not (isinstance(code, str) and CODE_RE.match(code)):
                item.fail(f"{at}.code {code!r} is not a valid FHIR code")
            if system == LOINC:
                if not (isinstance(code, str) and LOINC_CODE_RE.match(code)):
                    item.fail(f"{at}: LOINC code {code!r} does not match ^\\d{{1,7}}-\\d$")
                elif not loinc_check_digit_ok(code):
                    item.fail(f"{at}: LOINC code {code!r} has a wrong check digit")
            elif system == ISO_11073:
                if not (isinstance(code, str) and MDC_CODE_RE.match(code)):
                    item.fail(f"{at}: ISO/IEEE 11073 code {code!r} must be decimal digits")

    def check_value_and_absence(self, where: str, element: Dict[str, Any], item: Item) -> None:
        """obs-6, the dataAbsentReason code system and valueQuantity contents."""
        values = value_keys(element)
        absent = element.get("dataAbsentReason")
        if values and absent is not None:
            item.fail(f"{where}{values[0]} and {where}dataAbsentReason must not both be present (obs-6)")
        if absent is not None:
            dar = codings(absent)
            if not dar:
                item.fail(f"{where}dataAbsentReason has no coding")
            for index, coding in enumerate(dar):
                if coding.get("system") != DATA_ABSENT_REASON:
                    item.fail(f"{where}dataAbsentReason.coding[{index}].system must be "
                              f"{DATA_ABSENT_REASON}, found {coding.get('system')!r}")
                elif coding.get("code") not in DATA_ABSENT_REASON_CODES:
                    item.fail(f"{where}dataAbsentReason.coding[{index}].code {coding.get('code')!r} "
                              "is not a data-absent-reason code")
        if "valueQuantity" in element:
            quantity = as_dict(element["valueQuantity"])
            for key in ("value", "unit", "system", "code"):
                if not is_set(quantity.get(key)):
                    item.fail(f"{where}valueQuantity.{key} missing")
            system = quantity.get("system")
            if is_set(system) and system != UCUM:
                item.fail(f"{where}valueQuantity.system must be {UCUM}, found {system!r}")

    def check_unit(self, where: str, quantity: Any, loinc: str, allowed: Tuple[str, ...], item: Item) -> None:
        """The UCUM code of `quantity` (if any) must be one of `allowed`."""
        unit = as_dict(quantity).get("code")
        if not is_set(unit):
            return  # no quantity, or its missing code is already reported
        if unit not in allowed:
            item.fail(f"{where}.code {unit!r} is not allowed for LOINC {loinc}; "
                      f"expected {' or '.join(repr(u) for u in allowed)} (UCUM)")

    def check_vital_signs(self, obs: Dict[str, Any], loincs: List[str],
                          components: List[Dict[str, Any]], item: Item) -> None:
        """R4 Vital Signs profile rules (category vital-signs)."""
        allowed = set(VITAL_SIGNS_CODES)
        if BODY_TEMPERATURE in loincs:
            allowed |= BODY_TEMPERATURE_SITE_CODES
        # (An Observation without any LOINC coding is already reported.)
        for loinc in loincs:
            if loinc not in allowed:
                extra = " (temperature site codes need 8310-5 too)" if loinc in BODY_TEMPERATURE_SITE_CODES else ""
                item.fail(f"vital-signs Observation: LOINC {loinc} is not in the vital-signs value set{extra}")
        if not any(k in obs for k in ("valueQuantity", "component", "dataAbsentReason", "hasMember")):
            item.fail("vital-signs Observation needs valueQuantity, component, dataAbsentReason or hasMember")
        for loinc in loincs:
            if loinc in VITAL_SIGNS_UNITS:
                self.check_unit("valueQuantity", obs.get("valueQuantity"), loinc,
                                VITAL_SIGNS_UNITS[loinc], item)
        for index, component in enumerate(components):
            for loinc in codes_of(component.get("code"), LOINC):
                if loinc in VITAL_SIGNS_UNITS:
                    self.check_unit(f"component[{index}].valueQuantity", component.get("valueQuantity"),
                                    loinc, VITAL_SIGNS_UNITS[loinc], item)

    def check_bp_panel(self, obs: Dict[str, Any], components: List[Dict[str, Any]], item: Item) -> None:
        """Blood-pressure panel: values live in the systolic/diastolic components."""
        for key in value_keys(obs):
            item.fail(f"blood-pressure panel ({BP_PANEL}) must not have {key}; "
                      f"values belong in the {BP_SYSTOLIC}/{BP_DIASTOLIC} components")
        for wanted, name in ((BP_SYSTOLIC, "systolic"), (BP_DIASTOLIC, "diastolic")):
            found = [c for c in components if wanted in codes_of(c.get("code"), LOINC)]
            if not found:
                item.fail(f"blood-pressure panel has no {name} component (LOINC {wanted})")
            for component in found:
                if "valueQuantity" not in component and "dataAbsentReason" not in component:
                    item.fail(f"blood-pressure {name} component (LOINC {wanted}) needs "
                              "valueQuantity or dataAbsentReason")

    def check_device_resolution(self, item: Item, entries: List[Any], items: List[Item]) -> None:
        """Device references must resolve inside the same transaction Bundle."""
        ref = as_dict(item.resource.get("device")).get("reference")
        if not isinstance(ref, str) or not ref:
            return  # already reported as missing
        target = resolve_reference(ref, entries, items)
        if target is not None:
            if target.rtype not in ("Device", "DeviceMetric"):
                item.fail(f"device.reference {ref!r} resolves to entry {target.index} "
                          f"({target.rtype}), not to a Device")
            return
        if ref.startswith("Device?"):
            item.fail(f"device.reference {ref!r} matches no Device entry in this Bundle")
        elif ref.startswith(("Device/", "urn:uuid:", "urn:oid:")):
            item.fail(f"device.reference {ref!r} does not resolve to a Device entry in this Bundle "
                      "(by resource.id or fullUrl)")

    def check_duplicate_identifiers(self, item: Item, seen: Dict[str, str]) -> None:
        where = f"{item.path} entry {item.index}"
        for key in sorted(identifier_keys(item.resource)):
            if key in seen and seen[key] != where:
                item.fail(f"duplicate identifier {key!r} (also on {seen[key]})")
            else:
                seen.setdefault(key, where)

    # ----------------------------------------------------------------- report

    def report(self) -> int:
        lines: List[str] = []
        for path, problems in self.file_problems.items():
            lines.extend(f"{path}: {p}" for p in problems)
        for item in self.items:
            lines.extend(f"{item.label}: {p}" for p in item.problems)
        for line in lines:
            print(line)

        passed = sum(1 for it in self.items if not it.problems)
        failed = sum(1 for it in self.items if it.problems) + len(self.file_problems)
        if self.observation_count == 0:
            print("fhir-validate: no Observation resources found")
        print(f"fhir-validate: {passed} passed, {failed} failed")
        return 1 if failed or self.observation_count == 0 else 0


def identifier_keys(resource: Dict[str, Any]) -> set:
    """`system|value` keys of a resource's complete identifiers."""
    keys = set()
    for ident in as_list(resource.get("identifier")):
        ident = as_dict(ident)
        if is_set(ident.get("system")) and is_set(ident.get("value")):
            keys.add(f"{ident['system']}|{ident['value']}")
    return keys


def resolve_reference(ref: str, entries: List[Any], items: List[Item]) -> Optional[Item]:
    """Find the Bundle entry a reference points at: by fullUrl, by
    `Type/id` (resource.id, or the tail of an absolute fullUrl), or for a
    conditional `Device?identifier=system|value` by the Device's identifiers."""
    if ref.startswith("Device?"):
        wanted = []
        for part in ref.split("?", 1)[1].split("&"):
            name, _, raw = part.partition("=")
            if name == "identifier":
                wanted.append(unquote(raw))
        for item in items:
            if item.rtype == "Device":
                keys = identifier_keys(item.resource)
                values = {k.split("|", 1)[1] for k in keys}
                if wanted and all(w in keys or ("|" not in w and w in values) for w in wanted):
                    return item
        return None
    for entry, item in zip(entries, items):
        full_url = as_dict(entry).get("fullUrl")
        rid = item.resource.get("id")
        if ref == full_url:
            return item
        if isinstance(rid, str) and ref == f"{item.rtype}/{rid}":
            return item
        if isinstance(full_url, str) and RELATIVE_REF_RE.match(ref) and full_url.endswith("/" + ref):
            return item
    return None


# --------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------

def collect_json_files(target: Path) -> List[Path]:
    """A named file as is; every *.json below a directory, sorted."""
    if target.is_dir():
        return sorted(p for p in target.rglob("*.json") if p.is_file())
    return [target]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fhir_validate.py",
        description="Validate the gateway's FHIR R4 transaction Bundles (and Observation arrays).",
    )
    parser.add_argument("paths", nargs="*", metavar="DIR_OR_FILE",
                        help="Bundle JSON file, or directory searched recursively for *.json")
    parser.add_argument("--observations-array", action="append", default=[], metavar="FILE",
                        help="JSON array of Observation resources (output of `profile test`); repeatable")
    args = parser.parse_args(argv)
    if not args.paths and not args.observations_array:
        parser.error("give at least one DIR_OR_FILE or --observations-array FILE")

    validator = Validator()
    seen_files = set()  # a file reached twice must not count as its own duplicate
    for raw in args.paths:
        target = Path(raw)
        if not target.exists():
            validator.file_fail(raw, "no such file or directory")
            continue
        files = collect_json_files(target)
        if not files:
            validator.file_fail(raw, "no *.json files found")
        for path in files:
            key = path.resolve()
            if key not in seen_files:
                seen_files.add(key)
                validator.validate_bundle_file(path)
    for raw in args.observations_array:
        target = Path(raw)
        if not target.is_file():
            validator.file_fail(raw, "no such file")
            continue
        validator.validate_array_file(target)
    return validator.report()


if __name__ == "__main__":
    sys.exit(main())
