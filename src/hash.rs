//! Layer 0: SHA-1, the one hash BitTorrent v1 needs.
//!
//! A thin seam over `sha1_smol` so a faster hardware path can slot in behind the same API.

pub type Digest = [u8; 20];

pub fn sha1(data: &[u8]) -> Digest {
    let mut h = Sha1::new();
    h.update(data);
    h.finish()
}

#[derive(Clone, Default)]
pub struct Sha1(sha1_smol::Sha1);

impl Sha1 {
    pub fn new() -> Sha1 {
        Sha1(sha1_smol::Sha1::new())
    }
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
    pub fn finish(&self) -> Digest {
        self.0.digest().bytes()
    }
}

pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha1_known_vector() {
        assert_eq!(
            hex(&sha1(b"abc")),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        let mut h = Sha1::new();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), sha1(b"abc"));
    }
}
