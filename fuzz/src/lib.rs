//! Pieces shared by the fuzz targets: an in-memory Envoy shared-data store for the rate
//! limiter, compact-JWS helpers for the token targets, the oracles that judge what the
//! filter answers (no forged token accepted, no token or control character leaked), and the
//! sanitizer settings of the targets that run libespeak-ng.

pub mod jwt;
pub mod oracle;
pub mod store;

/// Sanitizer settings for a target that runs libespeak-ng, which has two upstream defects
/// (see fuzz/README.md): it reads (and copies from) freed memory when it switches language
/// inside a clause, which ASan reports through the libc functions espeak calls and through
/// libFuzzer's own comparison hooks; and every voice selection leaks about 1 KB, which the
/// phonemizer does again after a text switched espeak's phoneme table. So the heap is not
/// poisoned and leaks allocated inside libespeak-ng are not reported. Stack and global checks
/// and leak detection for Rust code stay on, and crashes, hangs and broken properties still
/// fail the run.
#[macro_export]
macro_rules! espeak_sanitizer_defaults {
    () => {
        #[no_mangle]
        pub extern "C" fn __asan_default_options() -> *const ::std::ffi::c_char {
            c"poison_heap=0".as_ptr()
        }

        #[no_mangle]
        pub extern "C" fn __lsan_default_suppressions() -> *const ::std::ffi::c_char {
            c"leak:libespeak-ng.so.1\n".as_ptr()
        }
    };
}
