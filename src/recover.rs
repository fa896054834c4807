//! Loops that must outlive one bad unit of work. The control loop and the certificate manager
//! run every translation and every certificate through [`catch`] / [`catch_async`]: a panic (a
//! bug that some input reached) becomes an error for that unit alone, which the loop logs and
//! counts, and the loop goes on with the next one. Without this, one panic would end the task
//! that runs them all, and pylon would serve its last snapshot while changes and renewals
//! silently stopped.

use std::any::Any;
use std::panic::AssertUnwindSafe;

use futures_util::FutureExt as _;

/// Runs `work`; a panic in it becomes `Err` with the panic's message.
pub fn catch<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|payload| message(&*payload))
}

/// Runs `work` to completion; a panic in it becomes `Err` with the panic's message.
pub async fn catch_async<T>(work: impl Future<Output = T>) -> Result<T, String> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|payload| message(&*payload))
}

/// A panic's message: the `&str` or `String` it was given, if any.
fn message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(
            catch(|| -> u8 { panic!("bad input") }),
            Err("bad input".to_owned())
        );
        let n = 3;
        assert_eq!(
            catch(|| -> u8 { panic!("object {n} is bad") }),
            Err("object 3 is bad".to_owned())
        );
        assert_eq!(
            catch(|| std::panic::panic_any(5u8)),
            Err("a panic without a message".to_owned())
        );
    }

    #[tokio::test]
    async fn a_panic_in_a_future_becomes_an_error() {
        assert_eq!(catch_async(async { 7 }).await, Ok(7));
        let failed = catch_async(async {
            tokio::task::yield_now().await;
            let v: Vec<u8> = Vec::new();
            v[1]
        })
        .await;
        assert!(failed.unwrap_err().contains("index out of bounds"));
    }
}
