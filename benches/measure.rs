//! measure: the cost of one measurement-register extend against a real software TPM (swtpm on
//! a unix socket), for choosing between "extend every decision record" and "batch every N
//! records / T ms" (docs/PERFORMANCE.md). Three variants:
//! - `tpm_extend`: `Register::extend` as the decision log calls it (a socket register connects
//!   per command, so this includes a unix connect);
//! - `tpm_extend_held_connection`: the same TPM2_PCR_Extend bytes on one held connection, the
//!   shape of a kept-open /dev/tpmrm0 (the TPM's own work plus one round trip);
//! - `tpm_read`: `Register::read` (TPM2_PCR_Read).
//!
//! Without swtpm the bench prints why and measures nothing.
//!
//! `MEASURE_SPEC=tpm:pcr=23,device=/dev/tpmrm0 cargo bench --bench measure` measures
//! `extend` and `read` on that register instead (on a real TPM or vTPM: it changes the PCR).

#[path = "../tests/swtpm/mod.rs"]
mod swtpm;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use agent_warden::attestation::measure::{self, tpm};
use criterion::{criterion_group, criterion_main, Criterion};

fn bench(c: &mut Criterion) {
    if let Ok(spec) = std::env::var("MEASURE_SPEC") {
        let mut reg = measure::open(&spec).unwrap();
        let mut g = c.benchmark_group("measure_spec");
        g.measurement_time(Duration::from_secs(3)).sample_size(20);
        let mut hash = [0u8; 32];
        g.bench_function("extend", |b| {
            b.iter(|| {
                hash[0] = hash[0].wrapping_add(1);
                reg.extend(&hash).unwrap()
            })
        });
        g.bench_function("read", |b| b.iter(|| reg.read().unwrap()));
        g.finish();
        return;
    }
    if let Some(reason) = swtpm::missing_tools(&[]) {
        eprintln!("SKIPPING measure bench: {reason}");
        return;
    }
    let tpm = swtpm::Swtpm::start();
    let spec = format!("tpm:pcr=23,device={}", tpm.socket().display());
    let mut reg = measure::open(&spec).unwrap();
    let mut g = c.benchmark_group("measure");
    g.measurement_time(Duration::from_secs(3)).sample_size(30);
    let mut hash = [0u8; 32];
    g.bench_function("tpm_extend", |b| {
        b.iter(|| {
            hash[0] = hash[0].wrapping_add(1);
            reg.extend(&hash).unwrap()
        })
    });
    let mut conn = UnixStream::connect(tpm.socket()).unwrap();
    let cmd = tpm::extend_command(23, &hash);
    g.bench_function("tpm_extend_held_connection", |b| {
        b.iter(|| {
            conn.write_all(&cmd).unwrap();
            // TPM2_PCR_Extend's response: header, parameterSize, empty password session.
            let mut resp = [0u8; 19];
            conn.read_exact(&mut resp).unwrap();
            assert_eq!(&resp[6..10], &[0, 0, 0, 0], "TPM response code");
        })
    });
    drop(conn);
    g.bench_function("tpm_read", |b| b.iter(|| reg.read().unwrap()));
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
