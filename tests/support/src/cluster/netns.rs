//! A pod network, as a Kubernetes node routes one: every pod in its own network namespace
//! with its own address, a bridge in a "node" namespace of its own, and a Service (`pg`) as
//! a virtual IP that the node DNATs (iptables, real conntrack) to whichever pod the
//! endpoints stand-in names. Nothing here touches the host's own network namespace: the node
//! namespace has no link to it, so no packet can leave the machine, and the addresses
//! (10.213.0.0/16) exist only inside these namespaces.
//!
//! Routing is Calico-like: a pod has a /32 address and a default route to the node
//! (10.213.0.1 on the bridge), so every packet between pods passes the node's routing and
//! netfilter. A deleted pod's address gets a `blackhole` route on the node: packets to it
//! vanish without an answer, so connections to it hang (SYN retransmits, then the caller's
//! timeout) instead of being refused, as when a pod's IP disappears from a cluster network.
//! Addresses are never reused: a pod started again gets a new one, as in Kubernetes.
//!
//! Names resolve per pod from `/etc/netns/<namespace>/hosts`, which `ip netns exec`
//! bind-mounts over /etc/hosts: the pod's own name, `pg` (the Service's virtual IP),
//! `pgbouncer-admin` (a headless Service: one line per PgBouncer pod) and `etcd`. The files are
//! rewritten in place (same inode, so the bind mounts see it) whenever a pod comes or goes.
//!
//! Namespace names are `pph-<test pid>-<counter>-<pod>`. Drop removes every namespace and
//! hosts directory made here; `PodNet::new` first removes those of test processes that are
//! gone (a killed test cannot run Drop), killing what still runs in them.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::util::*;

/// The node's address on the bridge, every pod's gateway.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 1);
/// The primary Service `pg`'s virtual IP (outside the pods' /24, routed to the node).
pub const PG_VIP: Ipv4Addr = Ipv4Addr::new(10, 213, 1, 10);
/// The pod addresses' subnet, for pg_hba.
pub const POD_CIDR: &str = "10.213.0.0/16";
/// Port of the `pg` Service (and of Postgres in every member pod).
pub const PG_PORT: u16 = 5432;

const PREFIX: &str = "pph-";
/// kube-proxy's KUBE-MARK-MASQ bit.
const MASQ_MARK: &str = "0x4000";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One pod's network: its namespace and address.
#[derive(Clone, Debug)]
pub struct NetPod {
    pub name: String,
    pub ns: String,
    pub ip: Ipv4Addr,
}

pub struct PodNet {
    /// `pph-<pid>-<n>-`: every namespace of this network starts with it.
    pub prefix: String,
    pub node: String,
    pods: BTreeMap<String, NetPod>,
    /// next host part of a pod address (never reused)
    next: u8,
    /// next veth index on the node
    veths: u32,
    /// the pods behind the headless `pgbouncer-admin` name (in this order)
    pub bouncer_pods: Vec<String>,
    /// addresses of deleted pods (blackholed on the node)
    pub gone: Vec<Ipv4Addr>,
    /// Deleted PgBouncer pods whose address `pgbouncer-admin` still names until their
    /// replacement starts (see `del_pod`).
    stale_dns: BTreeMap<String, Ipv4Addr>,
}

fn ip(args: &[&str]) -> Res<String> {
    run_ok(Command::new("ip").args(args), Duration::from_secs(10))
}

fn in_node(node: &str, args: &[&str]) -> Res<String> {
    let mut full = vec!["netns", "exec", node];
    full.extend_from_slice(args);
    ip(&full)
}

/// Enters network namespace `ns` with the calling thread (only this thread: a process's
/// threads may each have their own). Processes this thread spawns start there too.
pub fn enter(ns: &str) -> Res<()> {
    let path = format!("/run/netns/{ns}");
    let f = std::fs::File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
    // SAFETY: setns on a valid fd we own; affects only this thread's network namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(format!("setns {ns}: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` on a thread inside network namespace `ns` (None: here) and returns its result.
pub fn in_ns<T: Send>(ns: Option<&str>, f: impl FnOnce() -> Res<T> + Send) -> Res<T> {
    let Some(ns) = ns else { return f() };
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err("network-namespace thread panicked".into()))
    })
}

/// `ip netns exec <ns> <program>`: a process in the pod's network namespace, with the pod's
/// hosts file as /etc/hosts. `ip netns exec` execs, so the PID is the program's.
pub fn exec_in(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).arg(program);
    c
}

fn hosts_dir(ns: &str) -> PathBuf {
    Path::new("/etc/netns").join(ns)
}

/// Removes namespace `ns`: kills what still runs in it (by PID: only processes inside this
/// harness's namespace), deletes it and its hosts directory.
fn remove_ns(ns: &str) {
    let pids = ip(&["netns", "pids", ns]).unwrap_or_default();
    for p in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<i64>().ok())
    {
        signal(p, "KILL");
    }
    let _ = ip(&["netns", "del", ns]);
    let _ = std::fs::remove_dir_all(hosts_dir(ns));
}

/// The `pph-*` namespaces whose creating test process (the pid in the name) is gone.
fn stale(names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| {
            n.strip_prefix(PREFIX)
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .cloned()
        .collect()
}

/// Removes the namespaces (and hosts directories) of test processes that are gone.
pub fn sweep() {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    names.extend(
        std::fs::read_dir("/etc/netns")
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with(PREFIX)),
    );
    names.sort();
    names.dedup();
    for ns in stale(&names) {
        log(format!("removing stale network namespace {ns}"));
        remove_ns(&ns);
    }
}

impl PodNet {
    /// The node namespace with its bridge, forwarding on, redirects off, the Service chains.
    pub fn new() -> Res<PodNet> {
        sweep();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{PREFIX}{}-{n}-", std::process::id());
        let node = format!("{prefix}node");
        let net = PodNet {
            prefix,
            node: node.clone(),
            pods: BTreeMap::new(),
            next: 2,
            veths: 0,
            bouncer_pods: vec![],
            gone: vec![],
            stale_dns: BTreeMap::new(),
        };
        ip(&["netns", "add", &node])?;
        let node_ip = format!("{NODE_IP}/24");
        let vip_net = format!("{}/24", Ipv4Addr::from(u32::from(PG_VIP) & !0xff));
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["link", "add", "br0", "type", "bridge"],
            vec!["addr", "add", &node_ip, "dev", "br0"],
            vec!["link", "set", "br0", "up"],
            // The Service range is routed (to a gateway nobody owns), so that a VIP packet
            // no DNAT rule took reaches FORWARD and the no-endpoints REJECT there.
            vec![
                "route",
                "add",
                &vip_net,
                "via",
                "10.213.0.254",
                "dev",
                "br0",
            ],
        ] {
            let mut a = vec!["-n", node.as_str()];
            a.extend(args);
            ip(&a)?;
        }
        in_node(
            &node,
            &[
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
                "net.ipv4.conf.all.send_redirects=0",
                "net.ipv4.conf.default.send_redirects=0",
                "net.ipv4.conf.br0.send_redirects=0",
            ],
        )?;
        let vip = PG_VIP.to_string();
        let port = PG_PORT.to_string();
        in_node(&node, &["iptables", "-t", "nat", "-N", "PPH-SVC-PG"])?;
        in_node(
            &node,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-d",
                &vip,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "PPH-SVC-PG",
            ],
        )?;
        in_node(
            &node,
            &[
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-m",
                "mark",
                "--mark",
                &format!("{MASQ_MARK}/{MASQ_MARK}"),
                "-j",
                "MASQUERADE",
            ],
        )?;
        in_node(&node, &["iptables", "-N", "PPH-SVC-PG-NOEP"])?;
        in_node(
            &node,
            &[
                "iptables",
                "-A",
                "FORWARD",
                "-d",
                &vip,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "PPH-SVC-PG-NOEP",
            ],
        )?;
        net.set_pg_endpoint(None)?;
        log(format!(
            "pod network: node namespace {node}, bridge {node_ip}, Service pg {vip}:{port}"
        ));
        Ok(net)
    }

    /// A pod's namespace (re)created with a new address on the bridge.
    pub fn add_pod(&mut self, name: &str) -> Res<NetPod> {
        if self.pods.contains_key(name) {
            return Err(format!("pod {name} already has a network"));
        }
        if self.next == 255 {
            return Err("pod network: out of addresses".into());
        }
        let ns = format!("{}{name}", self.prefix);
        let addr = Ipv4Addr::new(10, 213, 0, self.next);
        self.next += 1;
        self.veths += 1;
        let veth = format!("v{}", self.veths);
        std::fs::create_dir_all(hosts_dir(&ns)).map_err(|e| format!("mkdir /etc/netns: {e}"))?;
        ip(&["netns", "add", &ns])?;
        let node = self.node.as_str();
        let cidr = format!("{addr}/32");
        let gw = NODE_IP.to_string();
        ip(&[
            "-n", node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["-n", node, "link", "set", &veth, "master", "br0", "up"])?;
        // kubelet's hairpin-veth: with br_netfilter loaded, a pod's packet to the Service
        // that DNATs to the pod itself is bridged back out of the port it came in on
        ip(&[
            "-n",
            node,
            "link",
            "set",
            &veth,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ])?;
        for args in [
            vec!["link", "set", "lo", "up"],
            vec!["addr", "add", &cidr, "dev", "eth0"],
            vec!["link", "set", "eth0", "up"],
            vec!["route", "add", &gw, "dev", "eth0", "scope", "link"],
            vec!["route", "add", "default", "via", &gw, "dev", "eth0"],
        ] {
            let mut a = vec!["-n", ns.as_str()];
            a.extend(args);
            ip(&a)?;
        }
        let pod = NetPod {
            name: name.into(),
            ns,
            ip: addr,
        };
        self.pods.insert(name.into(), pod.clone());
        self.stale_dns.remove(name);
        self.write_hosts();
        log(format!("pod {name}: network namespace {}, {addr}", pod.ns));
        Ok(pod)
    }

    /// The pod's network is gone: its namespace (and so its veth) deleted, what still ran in
    /// it killed, and its address blackholed on the node, so it answers nothing from now on.
    /// A PgBouncer pod's address stays in `pgbouncer-admin` until its replacement starts:
    /// the headless Service publishes not-ready addresses (configmap/pgbouncer-services.yaml),
    /// so the endpoints controller keeps a terminating pod until it is gone, and cluster DNS
    /// caches the answer (CoreDNS `cache 30`) on top.
    pub fn del_pod(&mut self, name: &str) {
        let Some(pod) = self.pods.remove(name) else {
            return;
        };
        if self.bouncer_pods.iter().any(|b| b == name) {
            self.stale_dns.insert(name.into(), pod.ip);
        }
        remove_ns(&pod.ns);
        let cidr = format!("{}/32", pod.ip);
        let _ = ip(&["-n", &self.node, "route", "add", "blackhole", &cidr]);
        self.gone.push(pod.ip);
        self.write_hosts();
        log(format!(
            "pod {name}: network gone, {} now answers nothing",
            pod.ip
        ));
    }

    pub fn pod(&self, name: &str) -> Option<&NetPod> {
        self.pods.get(name)
    }

    /// The hosts file every pod sees as /etc/hosts.
    fn hosts_text(&self, own: &NetPod) -> String {
        let mut t = format!(
            "127.0.0.1\tlocalhost\n{}\t{}\n{PG_VIP}\tpg\n",
            own.ip, own.name
        );
        for b in &self.bouncer_pods {
            let ip = self.pods.get(b).map(|p| p.ip);
            if let Some(ip) = ip.or(self.stale_dns.get(b).copied()) {
                t.push_str(&format!("{ip}\tpgbouncer-admin\n"));
            }
        }
        if let Some(e) = self.pods.get("etcd") {
            t.push_str(&format!("{}\tetcd\n", e.ip));
        }
        t
    }

    /// Rewrites every pod's hosts file in place (the bind mounts keep the inode).
    pub fn write_hosts(&self) {
        for p in self.pods.values() {
            let path = hosts_dir(&p.ns).join("hosts");
            let _ = std::fs::write(&path, self.hosts_text(p));
        }
    }

    /// See [`set_endpoint`].
    pub fn set_pg_endpoint(&self, target: Option<Ipv4Addr>) -> Res<()> {
        set_endpoint(&self.node, target)
    }
}

/// Points the `pg` Service of node namespace `node` at `target` (a pod address), or at
/// nothing: then, as kube-proxy does for a Service without endpoints, new connections are
/// rejected. Atomic per table (iptables-restore --noflush); established connections keep
/// their conntrack entry, whatever the rule says now.
pub fn set_endpoint(node: &str, target: Option<Ipv4Addr>) -> Res<()> {
    let rules = match target {
        // kube-proxy's hairpin rule: a pod reaching itself through the Service is
        // masqueraded (else its reply would go to itself directly and the kernel drops a
        // packet from its own address arriving on eth0 as martian)
        Some(t) => format!(
            "*nat\n:PPH-SVC-PG - [0:0]\n-A PPH-SVC-PG -s {t}/32 -j MARK --set-xmark {MASQ_MARK}/{MASQ_MARK}\n-A PPH-SVC-PG -p tcp -j DNAT --to-destination {t}:{PG_PORT}\nCOMMIT\n*filter\n:PPH-SVC-PG-NOEP - [0:0]\nCOMMIT\n"
        ),
        None => "*nat\n:PPH-SVC-PG - [0:0]\nCOMMIT\n*filter\n:PPH-SVC-PG-NOEP - [0:0]\n-A PPH-SVC-PG-NOEP -p tcp -j REJECT --reject-with icmp-port-unreachable\nCOMMIT\n".to_string(),
    };
    restore(node, &rules)
}

/// Makes the node reject (TCP reset) every new connection from `src` to port `port`
/// (`on`), or stop doing so: a NetworkPolicy flap between two pods.
pub fn reject(node: &str, src: Ipv4Addr, port: u16, on: bool) -> Res<()> {
    let (src, port) = (format!("{src}/32"), port.to_string());
    log(format!(
        "node: connections from {src} to port {port} {}",
        if on { "REJECTED" } else { "allowed again" }
    ));
    in_node(
        node,
        &[
            "iptables",
            if on { "-I" } else { "-D" },
            "FORWARD",
            "-s",
            &src,
            "-p",
            "tcp",
            "--dport",
            &port,
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ],
    )
    .map(|_| ())
}

fn restore(node: &str, rules: &str) -> Res<()> {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", node, "iptables-restore", "--noflush"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("iptables-restore: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .map_err(|e| format!("iptables-restore stdin: {e}"))?;
    match wait_child(&mut child, Duration::from_secs(10)) {
        Some(s) if s.success() => Ok(()),
        Some(s) => {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            Err(format!("iptables-restore: {s}: {err}"))
        }
        None => {
            let _ = child.kill();
            Err("iptables-restore hung".into())
        }
    }
}

impl Drop for PodNet {
    fn drop(&mut self) {
        let names: Vec<String> = self.pods.values().map(|p| p.ns.clone()).collect();
        for ns in names {
            remove_ns(&ns);
        }
        self.pods.clear();
        remove_ns(&self.node);
        log(format!("pod network {}* removed", self.prefix));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_namespaces_are_those_of_gone_processes() {
        let me = std::process::id();
        let names: Vec<String> = [
            format!("pph-{me}-0-node"),
            "pph-999999999-3-m1".to_string(),
            "pph-notapid-1-x".to_string(),
            "other-1".to_string(),
        ]
        .into();
        assert_eq!(stale(&names), vec!["pph-999999999-3-m1".to_string()]);
    }
}
