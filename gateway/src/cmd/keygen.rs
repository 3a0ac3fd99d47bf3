//! `iomt-gateway keygen`: create the secret keys (never overwriting one), rotate the
//! storage key, or create the SMART Backend Services key. A one-shot command: no async
//! runtime, no thread.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::Args;
use iomt_gateway::config::{Config, DEFAULT_PATH};
use iomt_gateway::secret_file;

/// The arguments of `keygen`.
#[derive(Args)]
pub(crate) struct KeygenArgs {
    /// The configuration file naming the key files.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Rotate the storage key: new rows use a new key; the old one moves to
    /// `<key_file>.retired` and keeps old rows readable until they are delivered.
    #[arg(long, conflicts_with = "smart")]
    rotate: bool,
    /// Create the SMART Backend Services key named in [uplinks.smart] private_key_file
    /// (mode 0600; an existing key is kept) and print its public JWK Set, which the
    /// backend registers for this client.
    #[arg(long)]
    smart: bool,
    /// The SMART key's algorithm (default: the one in [uplinks.smart], else ES384).
    #[arg(long, value_enum, requires = "smart")]
    alg: Option<iomt_gateway::smart::Alg>,
    #[command(flatten)]
    keys: KeyPaths,
}

/// Key files named on the command line. With both given, `keygen` needs no configuration
/// file (the Debian package creates the keys on first install this way, before the
/// configuration has been edited).
#[derive(Args)]
struct KeyPaths {
    /// The storage key file (instead of the configuration's [outbox] key_file).
    #[arg(long, value_name = "FILE", conflicts_with = "smart")]
    storage_key: Option<PathBuf>,
    /// The pseudonymization key file (instead of the configuration's
    /// [pseudonymization] key_file).
    #[arg(long, value_name = "FILE", conflicts_with = "smart")]
    pseudonym_key: Option<PathBuf>,
}

/// Runs `keygen` (or `keygen --smart`).
pub(crate) fn execute(args: KeygenArgs) -> Result<ExitCode> {
    if args.smart {
        keygen_smart(&args.config, args.alg)
    } else {
        keygen(&args.config, args.rotate, args.keys)
    }
}

fn keygen_smart(config_path: &Path, alg: Option<iomt_gateway::smart::Alg>) -> Result<ExitCode> {
    use iomt_gateway::config::UplinkKind;
    use iomt_gateway::smart::SigningKey;
    use iomt_gateway::uplink::fhir_http::AuthSettings;
    let config = Config::load(config_path)?;
    let smart = config
        .uplinks
        .iter()
        .find_map(|u| match &u.kind {
            UplinkKind::Fhir(f) => match &f.auth {
                AuthSettings::Smart(s) => Some(s.clone()),
                _ => None,
            },
            _ => None,
        })
        .ok_or_else(|| {
            anyhow::anyhow!(
                "no FHIR uplink has an [uplinks.smart] table naming private_key_file in {}",
                config_path.display()
            )
        })?;
    let alg = alg.unwrap_or(smart.alg);
    if alg != smart.alg {
        bail!(
            "--alg {} differs from alg = \"{}\" in [uplinks.smart]; change the configuration first",
            alg.as_str(),
            smart.alg.as_str()
        );
    }
    let path = &smart.private_key_file;
    let key = if path.exists() {
        eprintln!("kept the existing SMART key {}", path.display());
        SigningKey::load(alg, path)?
    } else {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let key = SigningKey::generate(alg, path)?;
        eprintln!(
            "created the SMART {} key {} (mode 0600)",
            alg.as_str(),
            path.display()
        );
        key
    };
    eprintln!(
        "register this JWK Set with the backend for client_id {}:",
        smart.client_id
    );
    println!("{}", serde_json::to_string_pretty(&key.jwks())?);
    Ok(ExitCode::SUCCESS)
}

fn keygen(config_path: &Path, rotate: bool, keys: KeyPaths) -> Result<ExitCode> {
    let (storage, pseudonym_key) = match keys {
        KeyPaths {
            storage_key: Some(s),
            pseudonym_key: Some(p),
        } => (s, p),
        KeyPaths {
            storage_key,
            pseudonym_key,
        } => {
            let config = Config::load(config_path)?;
            (
                storage_key.unwrap_or(config.storage_key_file),
                pseudonym_key.unwrap_or(config.pseudonym_key_file),
            )
        }
    };
    let storage = &storage;
    if rotate {
        let retired_id = secret_file::read_key_file(storage)
            .map(|k| iomt_gateway::outbox::seal::StorageKey::derive(&k).id)?;
        secret_file::rotate_key_file(storage, &secret_file::random_key()?)?;
        println!(
            "rotated the storage key {} (previous key, id {retired_id:08x}, kept in {})",
            storage.display(),
            secret_file::retired_path(storage).display()
        );
        println!("restart the gateway to seal new rows with the new key");
        println!(
            "keep {} until `iomt-gateway outbox status` no longer lists key {retired_id:08x}",
            secret_file::retired_path(storage).display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for (what, path) in [
        ("storage key", storage),
        ("pseudonymization key", &pseudonym_key),
    ] {
        if path.exists() {
            println!("kept the existing {what} {}", path.display());
            continue;
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        secret_file::write_new_key_file(path, &secret_file::random_key()?)?;
        println!("created the {what} {} (mode 0600)", path.display());
    }
    println!("give the pseudonymization key to the backend's re-identification service; the storage key never leaves this device");
    Ok(ExitCode::SUCCESS)
}
