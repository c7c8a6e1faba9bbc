//! An HTTP filter that lets every request and response through untouched: the floor against
//! which benchmark 1 reads the voxgate filter's own work.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(PassRoot) });
}}

struct PassRoot;

impl Context for PassRoot {}

impl RootContext for PassRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(PassThrough))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Every callback keeps its default: continue.
struct PassThrough;

impl Context for PassThrough {}

impl HttpContext for PassThrough {}
