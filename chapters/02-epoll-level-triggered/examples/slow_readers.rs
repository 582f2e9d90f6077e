//! A workload that forces partial writes: clients that send big messages
//! quickly but read their echo slowly, so the server's send buffers fill and
//! its writes come up short. `loadgen echo` reads as fast as it can and
//! rarely causes one; this is the workload the chapter 02/03 comparison of
//! EPOLLOUT toggling needs.
//!
//! ```text
//! cargo run --release -p ch02-epoll-level-triggered --example slow_readers -- 127.0.0.1:7878 10 32
//! ```
//! (address, clients, MiB each client sends in 256 KiB messages). Each
//! client reads 64 KiB, then pauses 5 ms. Prints the messages sent, so the
//! server's summary counters can be divided by it.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

const MESSAGE: usize = 256 * 1024;

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7878".to_string());
    let clients: usize = args.next().map_or(10, |a| a.parse().unwrap());
    let mib_each: usize = args.next().map_or(32, |a| a.parse().unwrap());
    let total_each = mib_each * 1024 * 1024 / MESSAGE * MESSAGE;

    let started = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|_| {
            let addr = addr.clone();
            thread::spawn(move || slow_reader(&addr, total_each))
        })
        .collect();
    for handle in handles {
        handle.join().unwrap();
    }
    println!(
        "messages={} bytes_per_message={MESSAGE} clients={clients} seconds={:.1}",
        clients * total_each / MESSAGE,
        started.elapsed().as_secs_f64()
    );
}

fn slow_reader(addr: &str, total: usize) {
    let mut stream = TcpStream::connect(addr).unwrap();
    let writer = {
        let mut stream = stream.try_clone().unwrap();
        thread::spawn(move || {
            let mut message = vec![b'x'; MESSAGE];
            message[MESSAGE - 1] = b'\n';
            for _ in 0..total / MESSAGE {
                stream.write_all(&message).unwrap();
            }
        })
    };
    let mut buffer = vec![0; 64 * 1024];
    let mut received = 0;
    while received < total {
        let n = stream.read(&mut buffer).unwrap();
        assert!(n > 0, "server closed early");
        received += n;
        thread::sleep(Duration::from_millis(5));
    }
    writer.join().unwrap();
}
