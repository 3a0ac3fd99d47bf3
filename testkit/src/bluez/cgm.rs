//! The simulated continuous glucose monitor's values: CGM Feature says E2E-CRC is
//! supported, so every value it serves (Feature, Session Start Time, Session Run Time and
//! the records built by [`cgm_record`]) carries its CRC-16/MCRF4XX.

/// CRC-16/MCRF4XX, the CGM specification's E2E-CRC (reflected 0x1021, seed 0xFFFF).
fn e2e_crc(bytes: &[u8]) -> u16 {
    let mut crc = 0xFFFFu16;
    for &b in bytes {
        crc ^= u16::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x8408
            } else {
                crc >> 1
            };
        }
    }
    crc
}

fn with_crc(mut b: Vec<u8>) -> Vec<u8> {
    let crc = e2e_crc(&b);
    b.extend(crc.to_le_bytes());
    b
}

/// The session start the simulated CGM reports: 2024-03-15 08:00:00, UTC+1 (4 quarter
/// hours), standard time.
pub const SESSION_START: [u8; 9] = [0xE8, 0x07, 0x03, 0x0F, 0x08, 0x00, 0x00, 0x04, 0x00];

/// The initial value of a CGM characteristic the device serves on reads.
pub(crate) fn initial(uuid: u16) -> Vec<u8> {
    match uuid {
        // E2E-CRC supported (bit 12), trend and quality supported; interstitial fluid,
        // subcutaneous tissue.
        0x2AA8 => with_crc(vec![0x00, 0x90, 0x01, 0x59]),
        0x2AAA => with_crc(SESSION_START.to_vec()),
        // 14 days.
        0x2AAB => with_crc(vec![0x50, 0x01]),
        _ => Vec::new(),
    }
}

/// A CGM Measurement record with its E2E-CRC: `mg_dl` (an SFLOAT with exponent 0) at
/// `offset` minutes into the session, with the Status octet `status` when it is not 0.
pub fn cgm_record(mg_dl: u16, offset: u16, status: u8) -> Vec<u8> {
    let flags = if status != 0 { 0x80 } else { 0x00 };
    let size = if status != 0 { 9 } else { 8 };
    let mut b = vec![size, flags];
    b.extend((mg_dl & 0x0FFF).to_le_bytes());
    b.extend(offset.to_le_bytes());
    if status != 0 {
        b.push(status);
    }
    with_crc(b)
}
