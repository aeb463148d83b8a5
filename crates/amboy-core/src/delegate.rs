//! [`delegate_retryable_queue!`](crate::delegate_retryable_queue): the `Queue`,
//! `RetryableQueue` and `LockStore` implementations of a handle that holds its queue in a field.

/// Implements [`Queue`](crate::Queue), [`RetryableQueue`](crate::RetryableQueue) and
/// [`LockStore`](crate::LockStore) for `$handle` by calling its field `$engine`, which
/// implements all three: for queues whose users hold a handle (closing the queue when the last
/// one is dropped) while runners and background tasks hold the engine.
///
/// ```ignore
/// pub struct MyQueue { engine: Arc<Engine> }
/// amboy_core::delegate_retryable_queue!(MyQueue, engine);
/// ```
#[macro_export]
macro_rules! delegate_retryable_queue {
    ($handle:ty, $engine:ident) => {
        #[$crate::__private::async_trait]
        impl $crate::Queue for $handle {
            fn id(&self) -> &str {
                $crate::Queue::id(&*self.$engine)
            }
            async fn put(&self, job: $crate::JobRef) -> $crate::Result<()> {
                $crate::Queue::put(&*self.$engine, job).await
            }
            async fn put_many(&self, jobs: Vec<$crate::JobRef>) -> $crate::Result<()> {
                $crate::Queue::put_many(&*self.$engine, jobs).await
            }
            async fn get(&self, id: &str) -> $crate::Result<$crate::JobRef> {
                $crate::Queue::get(&*self.$engine, id).await
            }
            async fn next(&self) -> $crate::Result<$crate::JobRef> {
                $crate::Queue::next(&*self.$engine).await
            }
            fn try_next(&self) -> Option<$crate::JobRef> {
                $crate::Queue::try_next(&*self.$engine)
            }
            fn try_complete(&self, job: &$crate::JobRef) -> Option<$crate::Result<()>> {
                $crate::Queue::try_complete(&*self.$engine, job)
            }
            fn info(&self) -> $crate::QueueInfo {
                $crate::Queue::info(&*self.$engine)
            }
            async fn complete(&self, job: &$crate::JobRef) -> $crate::Result<()> {
                $crate::Queue::complete(&*self.$engine, job).await
            }
            async fn save(&self, job: &$crate::JobRef) -> $crate::Result<()> {
                $crate::Queue::save(&*self.$engine, job).await
            }
            async fn results(&self) -> $crate::JobStream {
                $crate::Queue::results(&*self.$engine).await
            }
            async fn job_info(&self) -> $crate::JobInfoStream {
                $crate::Queue::job_info(&*self.$engine).await
            }
            async fn stats(&self) -> $crate::Result<$crate::QueueStats> {
                $crate::Queue::stats(&*self.$engine).await
            }
            fn runner(&self) -> Option<::std::sync::Arc<dyn $crate::Runner>> {
                $crate::Queue::runner(&*self.$engine)
            }
            fn set_runner(
                &self,
                runner: ::std::sync::Arc<dyn $crate::Runner>,
            ) -> $crate::Result<()> {
                $crate::Queue::set_runner(&*self.$engine, runner)
            }
            async fn start(&self) -> $crate::Result<()> {
                $crate::Queue::start(&*self.$engine).await
            }
            async fn close(&self) {
                $crate::Queue::close(&*self.$engine).await
            }
            async fn shutdown(&self, grace: ::std::time::Duration) {
                $crate::Queue::shutdown(&*self.$engine, grace).await
            }
            fn as_retryable(&self) -> Option<&dyn $crate::RetryableQueue> {
                Some(self)
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::RetryableQueue for $handle {
            fn retry_handler(&self) -> Option<::std::sync::Arc<dyn $crate::RetryHandler>> {
                $crate::RetryableQueue::retry_handler(&*self.$engine)
            }
            fn set_retry_handler(
                &self,
                handler: ::std::sync::Arc<dyn $crate::RetryHandler>,
            ) -> $crate::Result<()> {
                $crate::RetryableQueue::set_retry_handler(&*self.$engine, handler)
            }
            async fn get_attempt(&self, id: &str, attempt: u32) -> $crate::Result<$crate::JobRef> {
                $crate::RetryableQueue::get_attempt(&*self.$engine, id, attempt).await
            }
            async fn get_all_attempts(&self, id: &str) -> $crate::Result<Vec<$crate::JobRef>> {
                $crate::RetryableQueue::get_all_attempts(&*self.$engine, id).await
            }
            async fn complete_retrying_and_put(
                &self,
                to_complete: &$crate::JobRef,
                to_put: $crate::JobRef,
            ) -> $crate::Result<()> {
                $crate::RetryableQueue::complete_retrying_and_put(
                    &*self.$engine,
                    to_complete,
                    to_put,
                )
                .await
            }
            async fn complete_retrying(&self, job: &$crate::JobRef) -> $crate::Result<()> {
                $crate::RetryableQueue::complete_retrying(&*self.$engine, job).await
            }
        }

        #[$crate::__private::async_trait]
        impl $crate::LockStore for $handle {
            async fn save_locks(&self, jobs: &[$crate::JobRef]) -> Vec<$crate::Result<()>> {
                $crate::LockStore::save_locks(&*self.$engine, jobs).await
            }
        }
    };
}
