//! `JobId` hashes through `str`'s own `Hash`, so maps keyed by `JobId` are found with `&str`
//! even when a hasher treats strings differently from bytes, as foldhash's `nightly` feature
//! does by overriding `Hasher::write_str`.
//!
//! Overriding `write_str` needs a nightly compiler, and on a stable one every hasher hashes a
//! `str` as its bytes and `0xff`, exactly as the old hand-written `JobId` hashing did: only a
//! nightly build can tell the two apart. Run it with
//! `RUSTFLAGS="--cfg amboy_nightly" cargo +nightly test -p amboy-core --test job_id_hash`.

#![allow(unexpected_cfgs)]
#![cfg_attr(amboy_nightly, feature(hasher_prefixfree_extras))]

#[cfg(amboy_nightly)]
mod nightly {
    use std::collections::HashMap;
    use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

    use amboy_core::JobId;

    /// Hashes strings with a marker of their own instead of the bytes-then-`0xff` of the
    /// default `write_str`, as foldhash does with its `nightly` feature.
    #[derive(Default)]
    struct StrAware(u64);

    impl Hasher for StrAware {
        fn finish(&self) -> u64 {
            // Spread every input bit over the whole hash: maps look at its top and bottom bits.
            let mut hash = self.0.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            hash ^= hash >> 29;
            hash.wrapping_mul(0xbf58_476d_1ce4_e5b9)
        }

        fn write(&mut self, bytes: &[u8]) {
            for byte in bytes {
                self.0 = self.0.rotate_left(5) ^ u64::from(*byte);
            }
        }

        fn write_str(&mut self, s: &str) {
            self.write(s.as_bytes());
            self.write_u8(0x5a);
        }
    }

    #[test]
    fn str_lookups_find_job_ids_with_a_str_aware_hasher() {
        let build = BuildHasherDefault::<StrAware>::default();
        for id in ["job-1", &"long-".repeat(20)] {
            assert_eq!(build.hash_one(JobId::new(id)), build.hash_one(id), "{id}");
        }
        let mut map: HashMap<JobId, u32, BuildHasherDefault<StrAware>> = HashMap::default();
        map.insert(JobId::new("job-1"), 1);
        map.insert(JobId::new(&"long-".repeat(20)), 2);
        assert_eq!(map.get("job-1"), Some(&1));
        assert_eq!(map.get("long-".repeat(20).as_str()), Some(&2));
        assert_eq!(map.get("job-2"), None);
    }
}
