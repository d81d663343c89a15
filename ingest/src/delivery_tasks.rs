//! The delivery tasks of stored webhooks or notification channels, one per id: started for
//! new ones, stopped for deleted ones, all stopped at shutdown. In cluster mode only the node
//! holding the cluster's duties runs them ([`DeliveryTasks::run_here`]).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::task::JoinHandle;

pub struct DeliveryTasks {
    running: Mutex<HashMap<i64, JoinHandle<()>>>,
    here: AtomicBool,
}

impl Default for DeliveryTasks {
    fn default() -> Self {
        DeliveryTasks {
            running: Mutex::default(),
            here: AtomicBool::new(true),
        }
    }
}

impl DeliveryTasks {
    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<i64, JoinHandle<()>>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether deliveries run in this process (the next `retain` starts or stops them).
    pub fn run_here(&self, here: bool) {
        self.here.store(here, Ordering::Relaxed);
        if !here {
            self.stop_all();
        }
    }

    /// Stops the tasks of ids not in `stored`; returns those of `stored` without a task
    /// (none while deliveries do not run here).
    pub fn retain(&self, stored: &[i64]) -> Vec<i64> {
        if !self.here.load(Ordering::Relaxed) {
            self.stop_all();
            return Vec::new();
        }
        let mut running = self.running();
        running.retain(|id, task| {
            let keep = stored.contains(id);
            if !keep {
                task.abort();
            }
            keep
        });
        stored
            .iter()
            .copied()
            .filter(|id| !running.contains_key(id))
            .collect()
    }

    /// Runs `delivery` for `id`, unless one runs for it already (two syncs may both find it
    /// missing; a second task would send every message twice).
    pub fn start(&self, id: i64, delivery: impl Future<Output = ()> + Send + 'static) {
        let mut running = self.running();
        if running.get(&id).is_some_and(|task| !task.is_finished()) {
            return;
        }
        running.insert(id, tokio::spawn(delivery));
    }

    pub fn len(&self) -> usize {
        self.running().len()
    }

    pub fn is_empty(&self) -> bool {
        self.running().is_empty()
    }

    pub fn stop_all(&self) {
        for (_, task) in self.running().drain() {
            task.abort();
        }
    }
}
