//! Helpers shared by the fuzz targets.

/// Splits `data` at `\n` into exactly `N` fields (missing ones empty; the
/// last takes the rest), each read as UTF-8 with invalid bytes replaced.
pub fn fields<const N: usize>(data: &[u8]) -> [String; N] {
    let mut out: [String; N] = std::array::from_fn(|_| String::new());
    let mut parts = data.splitn(N, |b| *b == b'\n');
    for slot in out.iter_mut() {
        match parts.next() {
            Some(p) => *slot = String::from_utf8_lossy(p).into_owned(),
            None => break,
        }
    }
    out
}
