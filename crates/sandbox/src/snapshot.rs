//! Pre-initialised guests: a model's guest after `init`, snapshotted (as Wizer does) into a
//! component whose memories and globals start where `init` left them.
//!
//! What an instance is, besides its memories and globals, must not matter after `init` for the
//! snapshot to stand in for it: [`check`] refuses a guest that drew randomness in `init` (an
//! instance from the snapshot would draw the same values again) or holds a host resource other
//! than the package's directory (a handle that would dangle). Host graphs `init` loaded are
//! given to each new instance under the same handles. The one thing left is a guest that uses
//! the directory handle `init` opened once more: that traps, and the sandbox then gives up the
//! snapshot for the model and runs the call again as before.

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use rand::rngs::StdRng;
use rand::{SeedableRng, TryRng};

use wasmtime::Store;
use wasmtime::component::{Instance, WasmList};
use wasmtime_wizer::{ComponentContext, ComponentInstanceState, Wizer};

/// A guest's random source: seeded with zero (the same values on every peer), and counting
/// what the guest draws.
pub(crate) struct Counted {
    rng: StdRng,
    draws: Arc<AtomicU64>,
}

impl Counted {
    pub(crate) fn new(draws: Arc<AtomicU64>) -> Counted {
        Counted {
            rng: StdRng::seed_from_u64(0),
            draws,
        }
    }
}

impl TryRng for Counted {
    type Error = Infallible;

    fn try_next_u32(&mut self) -> Result<u32, Infallible> {
        self.draws.fetch_add(1, Ordering::Relaxed);
        self.rng.try_next_u32()
    }

    fn try_next_u64(&mut self) -> Result<u64, Infallible> {
        self.draws.fetch_add(1, Ordering::Relaxed);
        self.rng.try_next_u64()
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), Infallible> {
        self.draws.fetch_add(1, Ordering::Relaxed);
        self.rng.try_fill_bytes(dst)
    }
}

/// Whether what `init` left outside the guest's memories and globals allows a snapshot.
pub(crate) fn check(state: &mut super::CallState) -> Result<(), String> {
    if state.draws.load(Ordering::Relaxed) > 0 {
        return Err("init drew from the random source".into());
    }
    for entry in state.table.iter_mut() {
        match entry.downcast_ref::<wasmtime_wasi::filesystem::Descriptor>() {
            Some(wasmtime_wasi::filesystem::Descriptor::Dir(_)) => {}
            Some(wasmtime_wasi::filesystem::Descriptor::File(_)) => {
                return Err("init left a file open".into());
            }
            None => return Err("init left a host resource open (a stream or socket)".into()),
        }
    }
    Ok(())
}

/// Adds, to `wasm`, exports that read every core instance's memories and globals.
pub(crate) fn instrument(wasm: &[u8]) -> Result<(ComponentContext<'_>, Vec<u8>), String> {
    Wizer::new()
        .instrument_component(wasm)
        .map_err(|e| format!("{e:#}"))
}

/// Reads the state of `instance` (of the instrumented component) and writes the component that
/// starts in it.
pub(crate) fn snapshot<T: Send + 'static>(
    cx: &ComponentContext<'_>,
    store: &mut Store<T>,
    instance: Instance,
) -> Result<Vec<u8>, String> {
    let mut access = Access {
        store,
        instance,
        failed: None,
    };
    let wizer = Wizer::new();
    let bytes = {
        let future = std::pin::pin!(wizer.snapshot_component(cx, &mut access));
        // Every read below is synchronous: the future is ready the first time it is polled.
        match future.poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r.map_err(|e| format!("{e:#}"))?,
            Poll::Pending => return Err("the snapshot did not complete".into()),
        }
    };
    match access.failed {
        Some(e) => Err(e),
        None => Ok(bytes),
    }
}

/// [`ComponentInstanceState`] over a synchronous store; the first failure is kept (the trait
/// has no way to return it) and fails the snapshot.
struct Access<'a, T: 'static> {
    store: &'a mut Store<T>,
    instance: Instance,
    failed: Option<String>,
}

impl<T: Send + 'static> Access<'_, T> {
    fn call<R, O>(
        &mut self,
        instance: &str,
        func: &str,
        read: impl FnOnce(&Store<T>, R) -> O,
    ) -> Option<O>
    where
        R: wasmtime::component::Lift + Send + Sync + 'static,
    {
        if self.failed.is_some() {
            return None;
        }
        let result = (|| {
            let (_, outer) = self
                .instance
                .get_export(&mut *self.store, None, instance)
                .ok_or_else(|| format!("no export {instance}"))?;
            let (_, index) = self
                .instance
                .get_export(&mut *self.store, Some(&outer), func)
                .ok_or_else(|| format!("no export {instance}#{func}"))?;
            let f = self
                .instance
                .get_typed_func::<(), (R,)>(&mut *self.store, index)
                .map_err(|e| format!("{instance}#{func}: {e:#}"))?;
            let (r,) = f
                .call(&mut *self.store, ())
                .map_err(|e| format!("{instance}#{func}: {e:#}"))?;
            Ok::<O, String>(read(self.store, r))
        })();
        match result {
            Ok(o) => Some(o),
            Err(e) => {
                self.failed = Some(e);
                None
            }
        }
    }
}

impl<T: Send + 'static> ComponentInstanceState for Access<'_, T> {
    fn call_func_ret_list_u8(
        &mut self,
        instance: &str,
        func: &str,
        contents: impl FnOnce(&[u8]) + Send,
    ) -> impl Future<Output = ()> + Send {
        let mut contents = Some(contents);
        let read = self.call(instance, func, |store, list: WasmList<u8>| {
            if let Some(c) = contents.take() {
                c(list.as_le_slice(store));
            }
        });
        if read.is_none()
            && let Some(c) = contents.take()
        {
            c(&[]);
        }
        std::future::ready(())
    }

    fn call_func_ret_s32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i32> + Send {
        std::future::ready(self.call(instance, func, |_, r: i32| r).unwrap_or(0))
    }

    fn call_func_ret_s64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = i64> + Send {
        std::future::ready(self.call(instance, func, |_, r: i64| r).unwrap_or(0))
    }

    fn call_func_ret_f32(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u32> + Send {
        std::future::ready(
            self.call(instance, func, |_, r: f32| r.to_bits())
                .unwrap_or(0),
        )
    }

    fn call_func_ret_f64(
        &mut self,
        instance: &str,
        func: &str,
    ) -> impl Future<Output = u64> + Send {
        std::future::ready(
            self.call(instance, func, |_, r: f64| r.to_bits())
                .unwrap_or(0),
        )
    }
}
