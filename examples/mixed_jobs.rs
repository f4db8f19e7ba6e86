//! Several kinds of job on one key: two ways to do it.
//!
//! 1. An enum of job kinds and one handler that matches on it: the jobs are plain values (no
//!    allocation), can be inspected, and can be handed back by `close_now` and persisted.
//! 2. Boxed closures with [`Dispatcher::spawn`]: any code, at the cost of one allocation per
//!    job and jobs that cannot be inspected.
//!
//! Both keep per-key order: here, every device's events are applied in the order they came.
//!
//! ```text
//! cargo run --example mixed_jobs
//! ```

use keyed_dispatch::Dispatcher;
use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

/// The enum style: each variant is one kind of job.
#[derive(Debug)]
enum DeviceEvent {
    Connected,
    Reading(f64),
    Disconnected,
}

#[derive(Debug, Default)]
struct Device {
    connected: bool,
    readings: Vec<f64>,
}

#[derive(Debug)]
struct NotConnected(&'static str);

impl fmt::Display for NotConnected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "device {} sent data while disconnected", self.0)
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    env_logger::init();
    let devices = ["thermo-1", "thermo-2", "pump-7"];

    // 1. Enum jobs. The handler is fallible: a failure is logged at `warn` with its key,
    //    counted in `stats().failed` and passed to `on_error` (not set here).
    let state: Arc<Mutex<HashMap<&'static str, Device>>> = Arc::default();
    let events = {
        let state = Arc::clone(&state);
        Dispatcher::builder().workers(2).name("devices").build(
            move |device: &&'static str, event: DeviceEvent| -> Result<(), NotConnected> {
                let mut state = state.lock().unwrap();
                let Device {
                    connected,
                    readings,
                } = state.entry(*device).or_default();
                match event {
                    DeviceEvent::Connected => *connected = true,
                    DeviceEvent::Reading(_) if !*connected => return Err(NotConnected(device)),
                    DeviceEvent::Reading(value) => readings.push(value),
                    DeviceEvent::Disconnected => *connected = false,
                }
                Ok(())
            },
        )?
    };
    for device in devices {
        events.dispatch(device, DeviceEvent::Connected)?;
        for i in 0..5 {
            events.dispatch(device, DeviceEvent::Reading(20.0 + f64::from(i)))?;
        }
        events.dispatch(device, DeviceEvent::Disconnected)?;
    }
    let report = events.close();
    // Order held: every reading came between Connected and Disconnected.
    assert_eq!(report.stats.failed, 0);
    for device in devices {
        assert_eq!(state.lock().unwrap()[device].readings.len(), 5);
    }
    println!(
        "enum jobs:    {} events over {} devices, {} failed",
        report.stats.completed,
        devices.len(),
        report.stats.failed
    );

    // 2. Boxed closures: `build_spawner` makes a dispatcher whose jobs are `FnOnce()`.
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let tasks = Dispatcher::builder()
        .workers(2)
        .name("tasks")
        .build_spawner()?;
    for device in devices {
        for step in ["check", "update"] {
            let log = Arc::clone(&log);
            tasks.spawn(device, move || {
                log.lock()
                    .unwrap()
                    .push(format!("{device}: firmware {step}"))
            })?;
        }
    }
    let report = tasks.close();
    let log = log.lock().unwrap();
    for device in devices {
        let check = log
            .iter()
            .position(|l| *l == format!("{device}: firmware check"));
        let update = log
            .iter()
            .position(|l| *l == format!("{device}: firmware update"));
        assert!(check < update, "{device}: update ran before check");
    }
    println!(
        "boxed jobs:   {} closures over {} devices, each device's in order",
        report.stats.completed,
        devices.len()
    );
    Ok(())
}
