//! A known mix of traffic between lab pods: UDP and TCP, same node and
//! across nodes, IPv4 and (dual-stack labs) IPv6. Sockets are opened inside
//! the pods' namespaces; everything is bounded in count and time.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};
use serde::{Deserialize, Serialize};

use super::{
    netns::within,
    plan::{Plan, PodPlan, ServicePlan},
};

const TIMEOUT: Duration = Duration::from_secs(5);

/// What was sent, for tests and people to compare with the flows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sent {
    pub src_pod: String,
    pub dst_pod: String,
    pub src_ip: IpAddr,
    pub src_port: u16,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
    pub protocol: String,
    /// Datagrams sent (UDP); null for TCP, whose segments are the
    /// kernel's business.
    #[serde(default)]
    pub packets: Option<u64>,
    pub payload_bytes: u64,
}

/// Sends `count` datagrams of `size` bytes and waits until all arrived.
pub fn udp(
    src: &PodPlan,
    src_ip: IpAddr,
    dst: &PodPlan,
    dst_ip: IpAddr,
    port: u16,
    count: u64,
    size: usize,
) -> Result<Sent> {
    let receiver = within(&dst.netns, || {
        UdpSocket::bind(SocketAddr::new(dst_ip, port))
    })??;
    receiver.set_read_timeout(Some(TIMEOUT))?;
    let sender = within(&src.netns, || UdpSocket::bind(SocketAddr::new(src_ip, 0)))??;
    let payload = vec![0x5a; size];
    for _ in 0..count {
        sender.send_to(&payload, SocketAddr::new(dst_ip, port))?;
    }
    let mut buf = vec![0u8; size + 1];
    for i in 0..count {
        receiver.recv(&mut buf).with_context(|| {
            format!(
                "UDP {src_ip} -> {dst_ip}:{port}: datagram {} of {count} did not arrive",
                i + 1
            )
        })?;
    }
    Ok(Sent {
        src_pod: src.name.clone(),
        dst_pod: dst.name.clone(),
        src_ip,
        src_port: sender.local_addr()?.port(),
        dst_ip,
        dst_port: port,
        protocol: "udp".into(),
        packets: Some(count),
        payload_bytes: count * size as u64,
    })
}

/// Opens a connection, sends `bytes`, and waits until the peer read them.
pub fn tcp(
    src: &PodPlan,
    src_ip: IpAddr,
    dst: &PodPlan,
    dst_ip: IpAddr,
    port: u16,
    bytes: usize,
) -> Result<Sent> {
    let listener = within(&dst.netns, || {
        TcpListener::bind(SocketAddr::new(dst_ip, port))
    })??;
    let server = std::thread::spawn(move || -> std::io::Result<usize> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(TIMEOUT))?;
        let mut got = Vec::new();
        s.read_to_end(&mut got)?;
        Ok(got.len())
    });
    let src_port = within(&src.netns, || -> std::io::Result<u16> {
        let mut c = TcpStream::connect_timeout(&SocketAddr::new(dst_ip, port), TIMEOUT)?;
        c.write_all(&vec![0xa5; bytes])?;
        Ok(c.local_addr()?.port())
    })??;
    let got = server
        .join()
        .map_err(|_| anyhow::anyhow!("TCP receiver panicked"))??;
    if got != bytes {
        bail!("TCP {src_ip} -> {dst_ip}:{port}: {got} of {bytes} bytes arrived");
    }
    Ok(Sent {
        src_pod: src.name.clone(),
        dst_pod: dst.name.clone(),
        src_ip,
        src_port,
        dst_ip,
        dst_port: port,
        protocol: "tcp".into(),
        packets: None,
        payload_bytes: bytes as u64,
    })
}

/// The pairs the mix uses: same node (first two pods of the first node)
/// and across nodes (first pod of the first two nodes).
fn pairs(plan: &Plan) -> Vec<(&PodPlan, &PodPlan)> {
    let on = |k: usize| -> Vec<&PodPlan> {
        plan.pods
            .iter()
            .filter(|p| p.node == plan.nodes[k].name)
            .collect()
    };
    let mut out = Vec::new();
    let first = on(0);
    if first.len() >= 2 {
        out.push((first[0], first[1]));
    }
    if plan.nodes.len() > 1 {
        out.push((first[0], on(1)[0]));
    }
    out
}

/// The known mix: per pair and address family, 10 UDP datagrams of 100
/// bytes and one TCP connection carrying 64 KiB.
pub fn mix(plan: &Plan) -> Result<Vec<Sent>> {
    let mut sent = Vec::new();
    let mut port = 5000;
    for (src, dst) in pairs(plan) {
        for (src_ip, dst_ip) in src.ips.iter().zip(&dst.ips) {
            port += 1;
            sent.push(udp(src, *src_ip, dst, *dst_ip, port, 10, 100)?);
            sent.push(tcp(src, *src_ip, dst, *dst_ip, port, 64 * 1024)?);
        }
    }
    // Through a Service VIP: the first pod to the Service of the second
    // Deployment, whose endpoints are on every node.
    if let (Some(src), Some(svc)) = (plan.pods.first(), plan.services.get(1)) {
        for src_ip in &src.ips {
            sent.push(udp_service(plan, src, *src_ip, svc, 10, 100)?);
        }
    }
    Ok(sent)
}

/// Sends `count` datagrams from one socket to a Service's VIP (its `dns`
/// port): DNAT picks one endpoint for the whole exchange; every endpoint
/// listens, and all datagrams must arrive at one of them.
pub fn udp_service(
    plan: &Plan,
    src: &PodPlan,
    src_ip: IpAddr,
    svc: &ServicePlan,
    count: u64,
    size: usize,
) -> Result<Sent> {
    let v6 = src_ip.is_ipv6();
    let port = svc
        .ports
        .iter()
        .find(|p| p.protocol == "UDP")
        .context("the Service has no UDP port")?;
    let vip = *svc
        .cluster_ips
        .iter()
        .find(|ip| ip.is_ipv6() == v6)
        .context("the Service has no VIP of this family")?;
    let mut receivers = Vec::new();
    for pod in plan.pods.iter().filter(|p| svc.backends.contains(&p.name)) {
        let Some(ip) = pod.ips.iter().find(|ip| ip.is_ipv6() == v6) else {
            continue;
        };
        let sock = within(&pod.netns, || {
            UdpSocket::bind(SocketAddr::new(*ip, port.target_port))
        })??;
        sock.set_nonblocking(true)?;
        receivers.push(sock);
    }
    let sender = within(&src.netns, || UdpSocket::bind(SocketAddr::new(src_ip, 0)))??;
    let payload = vec![0x33; size];
    for _ in 0..count {
        sender.send_to(&payload, SocketAddr::new(vip, port.port))?;
    }
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut got = 0;
    let mut buf = vec![0u8; size + 1];
    while got < count && std::time::Instant::now() < deadline {
        let before = got;
        for r in &receivers {
            while r.recv(&mut buf).is_ok() {
                got += 1;
            }
        }
        if got == before {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    if got != count {
        bail!(
            "UDP {src_ip} -> Service {} ({vip}:{}): {got} of {count} datagrams arrived",
            svc.name,
            port.port
        );
    }
    Ok(Sent {
        src_pod: src.name.clone(),
        dst_pod: format!("service/{}", svc.name),
        src_ip,
        src_port: sender.local_addr()?.port(),
        dst_ip: vip,
        dst_port: port.port,
        protocol: "udp".into(),
        packets: Some(count),
        payload_bytes: count * size as u64,
    })
}
