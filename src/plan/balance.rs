//! Load balancing: few live migrations that bring a pool's measured imbalance under its target,
//! each with its expected gain and its cost. A pure function of the hosts, the VMs, the settings
//! and the time. [`lower_bound`] says how many moves at the least any plan needs.
//!
//! **Imbalance** is measured in points: `100 × √(var(cpu) + var(mem))`, the variances taken over
//! the usable hosts' utilisations (measured use ÷ capacity less reservations). With memory even
//! it is the standard deviation of CPU use in percent.
//!
//! **A move** takes one VM from one host to another. Its gain is how much closer to the pool's
//! mean it brings its two hosts: the drop, in points, of `100 × √(Σ deviation²)` over the source
//! and the target (both dimensions), which does not shrink as the pool grows the way the pool's
//! standard deviation does. Its cost is the memory it copies, `Settings::cost_per_gib` points
//! per GiB. A move is made only when its gain is at least its cost and at least the
//! threshold's minimum gain, and when it lowers the pool's imbalance.
//!
//! **The search** is greedy: while the imbalance is above the target and the run's limits allow,
//! take the move with the largest net gain (gain − cost) among the VMs on the most loaded hosts
//! and the least loaded targets; ties go to the lowest names. Every move respects what
//! placement would: the target's `nodeSelector` match, its allocatable CPUs and memory (what is
//! placed there, moves included), required anti-affinity (both ways), required affinity (of the
//! VM, and of the VMs it leaves behind), cordons and host health (unusable hosts neither give
//! nor take), `evictionStrategy: None` and other reasons a VM may not move now (`Vm::pinned`),
//! and per-host limits on outgoing and incoming moves.
//!
//! **Hysteresis.** A run moves nothing unless the imbalance is above the target by more than
//! `Settings::band`, and then brings it down to the target: measurements that wander a little
//! around the target after a run start no new one ([`Settings::continuing`] drops the band for
//! a run that carries on where the run's limits cut the last one short). A VM balancing moved within
//! `Settings::cooldown` does not move again, and it never goes back, within
//! `Settings::no_return`, to a host a balancing move took it from; within a run a VM moves at
//! most once. Every move lowers the imbalance, and planning stops at the target, so the
//! measurements a run leaves plan nothing further.
//!
//! The target's hard rules are placement's own ([`placement::fits`], which includes the
//! anti-affinity of the VMs already on the target); balancing adds what only a move has: the
//! required affinity of the VMs the move leaves behind.

use super::placement::{self, Candidate, Placed, Request, Term};
use k8s_openapi::jiff::Timestamp;
use kube::core::SelectorExt;
use std::cell::OnceCell;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// CPU in millicores and memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory: u64,
}

/// A host of the pool as balancing sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Host {
    /// The host as placement sees it. Only a host placement could put a VM on now (Node Ready,
    /// not cordoned, libvirt answering, capacity known) gives or takes VMs; the others are left
    /// out of the imbalance as well.
    pub candidate: Candidate,
    /// What utilisation is measured against: the host's CPUs (millicores) and memory, less the
    /// pool's reservations. A host with either at zero is left out.
    pub capacity: Usage,
    /// Measured use of what is not one of the pool's VMs (domains ferry does not manage).
    pub other: Usage,
}

impl Host {
    fn usable(&self) -> bool {
        let c = &self.candidate;
        c.reachable
            && c.node_ready
            && !c.cordoned
            && c.allocatable.is_some()
            && self.capacity.cpu_millis > 0
            && self.capacity.memory > 0
    }
}

/// A VM placed on one of the pool's hosts.
#[derive(Debug, Clone)]
pub struct Vm {
    /// VirtualMachine name (unique within the pool).
    pub name: String,
    /// Its host, labels and allocation, as placement sees them.
    pub placed: Placed,
    /// Its measured use.
    pub demand: Usage,
    /// Memory a live migration copies (what its QEMU process holds).
    pub copy_bytes: u64,
    /// Why it may not move now (not running, `evictionStrategy: None`, a migration under way);
    /// `None` when it may.
    pub pinned: Option<String>,
    /// Labels its host's Node must carry.
    pub node_selector: BTreeMap<String, String>,
    /// Affinity terms (required ones are kept).
    pub affinity: Vec<Term>,
    /// Anti-affinity terms (required ones are kept); their selectors are also
    /// `placed.excludes` (see [`Vm::set_anti_affinity`]).
    pub anti_affinity: Vec<Term>,
    /// Balancing moves it made lately.
    pub history: Vec<PastMove>,
}

impl Vm {
    /// Set its anti-affinity terms, and with them what it excludes from its host.
    pub fn set_anti_affinity(&mut self, terms: Vec<Term>) {
        self.placed.excludes = placement::excludes(&terms);
        self.anti_affinity = terms;
    }
}

/// A balancing move a VM made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PastMove {
    /// When it started.
    pub at: Timestamp,
    /// The host it left.
    pub from: String,
}

/// How eager balancing is, from the threshold, and the run's limits.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Imbalance (points) a run brings the pool down to.
    pub target: f64,
    /// How far above the target (points) the imbalance must be before a run moves anything.
    pub band: f64,
    /// Cost of a move per GiB copied, in points.
    pub cost_per_gib: f64,
    /// Smallest gain (points) a move must bring.
    pub min_gain: f64,
    /// Moves per run.
    pub max_moves: usize,
    /// Moves leaving one host per run.
    pub max_out_per_host: usize,
    /// Moves arriving at one host per run.
    pub max_in_per_host: usize,
    /// A VM balancing moved does not move again for this long.
    pub cooldown: Duration,
    /// A VM does not go back to a host a balancing move took it from for this long.
    pub no_return: Duration,
}

/// Default of `Settings::cooldown`: vSphere DRS runs every 5 minutes; a VM sits out 6 runs.
pub const COOLDOWN: Duration = Duration::from_secs(30 * 60);
/// Default of `Settings::no_return`.
pub const NO_RETURN: Duration = Duration::from_secs(6 * 3600);

impl Settings {
    /// The settings of threshold `level` (1 conservative … 5 aggressive; out-of-range values are
    /// clamped) with the given limits, [`COOLDOWN`] and [`NO_RETURN`].
    pub fn level(level: i32, max_moves: usize, max_out: usize, max_in: usize) -> Settings {
        let (target, band, cost_per_gib, min_gain) = match level.clamp(1, 5) {
            1 => (25.0, 5.0, 4.0, 5.0),
            2 => (18.0, 4.0, 2.0, 3.0),
            3 => (12.0, 3.0, 1.0, 2.0),
            4 => (8.0, 2.0, 0.5, 1.0),
            _ => (5.0, 1.5, 0.25, 0.5),
        };
        Settings {
            target,
            band,
            cost_per_gib,
            min_gain,
            max_moves,
            max_out_per_host: max_out,
            max_in_per_host: max_in,
            cooldown: COOLDOWN,
            no_return: NO_RETURN,
        }
    }
}

impl Settings {
    /// These settings with `cooldown` per VM, and a no-return window of four cooldowns (at
    /// least [`NO_RETURN_MIN`]).
    pub fn with_cooldown(mut self, cooldown: Duration) -> Settings {
        self.cooldown = cooldown;
        self.no_return = (cooldown * 4).max(NO_RETURN_MIN);
        self
    }

    /// These settings for a run that carries on where the last one was cut short by the
    /// run's limits: no band, the run goes on down to the target.
    pub fn continuing(mut self) -> Settings {
        self.band = 0.0;
        self
    }

    /// The imbalance above which a run moves VMs.
    pub fn trigger(&self) -> f64 {
        self.target + self.band
    }
}

/// When the run after one at `last` is due, `interval` later plus a jitter of up to a tenth of
/// it chosen by `seed` (so that pools started together do not all run at once); `None` when no
/// run was made yet (one is due now).
pub fn next_run(last: Option<Timestamp>, interval: Duration, seed: u64) -> Option<Timestamp> {
    let last = last?;
    let ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX / 2);
    let jitter = ms / 10 * i64::try_from(seed % 1000).unwrap_or(0) / 1000;
    let at = last
        .as_millisecond()
        .saturating_add(ms)
        .saturating_add(jitter);
    Some(Timestamp::from_millisecond(at).unwrap_or(Timestamp::MAX))
}

/// The shortest no-return window [`Settings::with_cooldown`] sets.
pub const NO_RETURN_MIN: Duration = Duration::from_secs(3600);

/// One proposed live migration.
#[derive(Debug, Clone, PartialEq)]
pub struct Move {
    pub vm: String,
    pub from: String,
    pub to: String,
    /// How much closer to the mean it brings its two hosts, in points.
    pub gain: f64,
    /// Its cost in points.
    pub cost: f64,
    /// Memory it copies.
    pub copy_bytes: u64,
    /// The imbalance once it (and the moves before it) are made.
    pub after: f64,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Imbalance now, in points.
    pub imbalance: f64,
    /// Imbalance once the moves are made.
    pub expected: f64,
    /// The target.
    pub target: f64,
    /// Fewest moves that could reach the target (see [`lower_bound`]).
    pub lower_bound: usize,
    /// The moves, in order.
    pub moves: Vec<Move>,
    /// What was found, in a sentence.
    pub message: String,
}

const GIB: f64 = (1u64 << 30) as f64;

/// How many of the most loaded hosts give VMs at each step.
const SOURCES_PER_STEP: usize = 8;
/// How many of the least loaded hosts are tried as targets at each step.
const TARGETS_PER_STEP: usize = 32;

/// The working state: per usable host its use and VMs, per VM what holds it.
struct State<'a> {
    hosts: Vec<&'a Host>,
    /// Host name → index in `hosts`.
    index: HashMap<&'a str, usize>,
    /// Measured use per host (millicores, bytes), as floats.
    cpu: Vec<f64>,
    mem: Vec<f64>,
    /// VMs per host (indices into the VM list).
    on: Vec<Vec<usize>>,
    /// Where each VM is now (host index), `None` for VMs on hosts that are not usable.
    at: Vec<Option<usize>>,
    /// Why each VM may not move in this run (pinned, in cooldown), `None` when it may.
    held: Vec<Option<&'a str>>,
    /// Per VM, the hosts it may not go back to.
    barred: Vec<Vec<usize>>,
    /// Per VM, [`placement::required_in_pool`] of its affinity, worked out when first needed
    /// (it reads every VM of the pool).
    affinity_in_pool: Vec<OnceCell<Vec<bool>>>,
    out: Vec<usize>,
    inn: Vec<usize>,
}

/// Why a VM balancing moved lately does not move.
const IN_COOLDOWN: &str = "in cooldown";
/// Why a VM this run moved does not move again.
const MOVED: &str = "moved in this run";

/// Whether `at + window` is still ahead of `now`.
fn within(at: Timestamp, window: Duration, now: Timestamp) -> bool {
    let since = now.as_millisecond().saturating_sub(at.as_millisecond());
    since < i64::try_from(window.as_millis()).unwrap_or(i64::MAX)
}

impl<'a> State<'a> {
    fn new(hosts: &'a [Host], vms: &'a [Vm]) -> State<'a> {
        let usable: Vec<&Host> = hosts.iter().filter(|h| h.usable()).collect();
        let index: HashMap<&str, usize> = usable
            .iter()
            .enumerate()
            .map(|(i, h)| (h.candidate.name.as_str(), i))
            .collect();
        let n = usable.len();
        let mut st = State {
            cpu: usable.iter().map(|h| h.other.cpu_millis as f64).collect(),
            mem: usable.iter().map(|h| h.other.memory as f64).collect(),
            hosts: usable,
            index,
            on: vec![Vec::new(); n],
            at: vec![None; vms.len()],
            held: vms.iter().map(|v| v.pinned.as_deref()).collect(),
            barred: vec![Vec::new(); vms.len()],
            affinity_in_pool: vec![OnceCell::new(); vms.len()],
            out: vec![0; n],
            inn: vec![0; n],
        };
        for (i, v) in vms.iter().enumerate() {
            if let Some(&h) = st.index.get(v.placed.host.as_str()) {
                st.cpu[h] += v.demand.cpu_millis as f64;
                st.mem[h] += v.demand.memory as f64;
                st.on[h].push(i);
                st.at[i] = Some(h);
            }
        }
        st
    }

    /// Hold back the VMs balancing moved within the cooldown, and bar each from the hosts it
    /// left within the no-return window.
    fn hold(&mut self, vms: &[Vm], s: &Settings, now: Timestamp) {
        for (i, v) in vms.iter().enumerate() {
            if self.held[i].is_none() && v.history.iter().any(|m| within(m.at, s.cooldown, now)) {
                self.held[i] = Some(IN_COOLDOWN);
            }
            self.barred[i] = v
                .history
                .iter()
                .filter(|m| within(m.at, s.no_return, now))
                .filter_map(|m| self.index.get(m.from.as_str()).copied())
                .collect();
        }
    }

    fn uc(&self, h: usize) -> f64 {
        self.cpu[h] / self.hosts[h].capacity.cpu_millis as f64
    }

    fn um(&self, h: usize) -> f64 {
        self.mem[h] / self.hosts[h].capacity.memory as f64
    }

    fn name(&self, h: usize) -> &str {
        &self.hosts[h].candidate.name
    }

    /// Sums of utilisations and of their squares, per dimension.
    fn sums(&self) -> Sums {
        let mut s = Sums::default();
        for h in 0..self.hosts.len() {
            let (c, m) = (self.uc(h), self.um(h));
            s.c1 += c;
            s.c2 += c * c;
            s.m1 += m;
            s.m2 += m * m;
        }
        s
    }

    fn imbalance(&self) -> f64 {
        self.sums().imbalance(self.hosts.len())
    }

    /// Mean utilisations.
    fn means(&self) -> (f64, f64) {
        let n = self.hosts.len().max(1) as f64;
        let s = self.sums();
        (s.c1 / n, s.m1 / n)
    }

    /// How far above the mean host `h` is (its larger dimension).
    fn above(&self, h: usize, means: (f64, f64)) -> f64 {
        (self.uc(h) - means.0).max(self.um(h) - means.1)
    }

    /// What moving VM `v` (demand `d`) from `a` to `b` does, from the current `sums` and
    /// `means`: the pool's imbalance afterwards, and the move's gain (see the module's doc).
    fn after(&self, sums: &Sums, means: (f64, f64), d: Usage, a: usize, b: usize) -> (f64, f64) {
        let (ca, cb) = (
            self.hosts[a].capacity.cpu_millis as f64,
            self.hosts[b].capacity.cpu_millis as f64,
        );
        let (ma, mb) = (
            self.hosts[a].capacity.memory as f64,
            self.hosts[b].capacity.memory as f64,
        );
        let (dc, dm) = (d.cpu_millis as f64, d.memory as f64);
        let (uca, ucb) = (self.uc(a), self.uc(b));
        let (uma, umb) = (self.um(a), self.um(b));
        let (uca2, ucb2) = (uca - dc / ca, ucb + dc / cb);
        let (uma2, umb2) = (uma - dm / ma, umb + dm / mb);
        let s = Sums {
            c1: sums.c1 - uca - ucb + uca2 + ucb2,
            c2: sums.c2 - uca * uca - ucb * ucb + uca2 * uca2 + ucb2 * ucb2,
            m1: sums.m1 - uma - umb + uma2 + umb2,
            m2: sums.m2 - uma * uma - umb * umb + uma2 * uma2 + umb2 * umb2,
        };
        let local = |c1: f64, c2: f64, m1: f64, m2: f64| {
            let sq = |x: f64| x * x;
            (sq(c1 - means.0) + sq(c2 - means.0) + sq(m1 - means.1) + sq(m2 - means.1)).sqrt()
        };
        let gain = 100.0 * (local(uca, ucb, uma, umb) - local(uca2, ucb2, uma2, umb2));
        (s.imbalance(self.hosts.len()), gain)
    }

    /// Make the move of VM `v` to host `b`; it moves no more in this run.
    fn apply(&mut self, vms: &[Vm], v: usize, b: usize) {
        let Some(a) = self.at[v] else { return };
        let d = vms[v].demand;
        self.cpu[a] -= d.cpu_millis as f64;
        self.mem[a] -= d.memory as f64;
        self.cpu[b] += d.cpu_millis as f64;
        self.mem[b] += d.memory as f64;
        self.on[a].retain(|&x| x != v);
        self.on[b].push(v);
        self.at[v] = Some(b);
        self.out[a] += 1;
        self.inn[b] += 1;
        self.held[v] = Some(MOVED);
    }

    /// Whether VM `v` may move from `a` to `b` now: placement's rules for `b`, the no-return
    /// rule (placement's include the anti-affinity of the VMs on `b`), and the affinity of the
    /// VMs left on `a`.
    fn allowed(&self, vms: &[Vm], v: usize, a: usize, b: usize) -> bool {
        let vm = &vms[v];
        if self.barred[v].contains(&b) {
            return false;
        }
        let there: Vec<&Placed> = self.on[b].iter().map(|&w| &vms[w].placed).collect();
        let req = Request {
            uid: &vm.placed.uid,
            labels: &vm.placed.labels,
            need: vm.placed.need,
            node_selector: &vm.node_selector,
            affinity: &vm.affinity,
            anti_affinity: &vm.anti_affinity,
        };
        let in_pool = self.affinity_in_pool[v].get_or_init(|| {
            let others = vms.iter().filter(|o| o.name != vm.name).map(|o| &o.placed);
            placement::required_in_pool(&vm.affinity, others)
        });
        if placement::fits(&self.hosts[b].candidate, &there, in_pool, &req).is_err() {
            return false;
        }
        let labels = &vm.placed.labels;
        // None of the VMs left on `a` may lose its last partner there.
        let left = |w: usize| {
            self.on[a]
                .iter()
                .copied()
                .filter(move |&x| x != v && x != w)
        };
        !self.on[a].iter().filter(|&&w| w != v).any(|&w| {
            vms[w].affinity.iter().any(|t| {
                t.required
                    && t.selector.matches(labels)
                    && !left(w).any(|x| t.selector.matches(&vms[x].placed.labels))
            })
        })
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Sums {
    c1: f64,
    c2: f64,
    m1: f64,
    m2: f64,
}

impl Sums {
    fn imbalance(&self, n: usize) -> f64 {
        if n == 0 {
            return 0.0;
        }
        let n = n as f64;
        let vc = (self.c2 / n - (self.c1 / n).powi(2)).max(0.0);
        let vm = (self.m2 / n - (self.m1 / n).powi(2)).max(0.0);
        100.0 * (vc + vm).sqrt()
    }
}

/// The pool's imbalance now, in points.
pub fn imbalance(hosts: &[Host], vms: &[Vm]) -> f64 {
    State::new(hosts, vms).imbalance()
}

/// Plan the moves of one run at `now`.
pub fn plan(hosts: &[Host], vms: &[Vm], s: &Settings, now: Timestamp) -> Plan {
    let mut st = State::new(hosts, vms);
    st.hold(vms, s, now);
    let start = st.imbalance();
    let lower_bound = lower_bound_of(&st, vms, s.target);
    let mut moves: Vec<Move> = Vec::new();
    let mut current = start;
    let mut stopped = None;
    while start > s.trigger() && current > s.target {
        if moves.len() >= s.max_moves {
            stopped = Some(format!("the run's limit of {} move(s)", s.max_moves));
            break;
        }
        let Some((v, b, m)) = best_move(&st, vms, s, current) else {
            break;
        };
        st.apply(vms, v, b);
        current = m.after;
        moves.push(m);
    }
    let message = message(start, current, s, &moves, stopped, &st);
    Plan {
        imbalance: start,
        expected: current,
        target: s.target,
        lower_bound,
        moves,
        message,
    }
}

/// The move with the largest net gain, if any move gains at least its cost and the minimum:
/// the VM's index, the target's, and the move.
fn best_move(
    st: &State<'_>,
    vms: &[Vm],
    s: &Settings,
    current: f64,
) -> Option<(usize, usize, Move)> {
    let n = st.hosts.len();
    if n < 2 {
        return None;
    }
    let means = st.means();
    let sums = st.sums();
    let above: Vec<f64> = (0..n).map(|h| st.above(h, means)).collect();
    let mut order: Vec<usize> = (0..n).collect();
    // Most loaded first; ties by name.
    order.sort_by(|&x, &y| {
        above[y]
            .total_cmp(&above[x])
            .then_with(|| st.name(x).cmp(st.name(y)))
    });
    let sources: Vec<usize> = order
        .iter()
        .copied()
        .filter(|&h| above[h] > 0.0 && st.out[h] < s.max_out_per_host)
        .take(SOURCES_PER_STEP)
        .collect();
    let targets: Vec<usize> = order
        .iter()
        .rev()
        .copied()
        .filter(|&h| st.inn[h] < s.max_in_per_host)
        .take(TARGETS_PER_STEP)
        .collect();
    // (net, gain, cost, vm, from, to, after)
    let mut best: Option<(f64, f64, f64, usize, usize, usize, f64)> = None;
    for &a in &sources {
        for &v in &st.on[a] {
            let vm = &vms[v];
            if st.held[v].is_some() {
                continue;
            }
            let cost = vm.copy_bytes as f64 / GIB * s.cost_per_gib;
            for &b in &targets {
                if b == a {
                    continue;
                }
                let (after, gain) = st.after(&sums, means, vm.demand, a, b);
                if gain < cost || gain < s.min_gain || gain <= 0.0 || after >= current {
                    continue;
                }
                let net = gain - cost;
                if let Some(bm) = &best {
                    let better = net > bm.0 + 1e-9
                        || ((net - bm.0).abs() <= 1e-9
                            && (vm.name.as_str(), st.name(b))
                                < (vms[bm.3].name.as_str(), st.name(bm.5)));
                    if !better {
                        continue;
                    }
                }
                if !st.allowed(vms, v, a, b) {
                    continue;
                }
                best = Some((net, gain, cost, v, a, b, after));
            }
        }
    }
    best.map(|(_, gain, cost, v, a, b, after)| {
        let m = Move {
            vm: vms[v].name.clone(),
            from: st.name(a).to_string(),
            to: st.name(b).to_string(),
            gain,
            cost,
            copy_bytes: vms[v].copy_bytes,
            after,
        };
        (v, b, m)
    })
}

fn message(
    start: f64,
    end: f64,
    s: &Settings,
    moves: &[Move],
    stopped: Option<String>,
    st: &State<'_>,
) -> String {
    if st.hosts.len() < 2 {
        return format!(
            "{} usable host(s): nothing to balance between",
            st.hosts.len()
        );
    }
    if start <= s.target {
        return format!(
            "imbalance {start:.1} points, within the target {:.1}: nothing to move",
            s.target
        );
    }
    if start <= s.trigger() {
        return format!(
            "imbalance {start:.1} points, over the target {:.1} by less than the band {:.1}: nothing to move",
            s.target, s.band
        );
    }
    let mut pinned: BTreeMap<&str, usize> = BTreeMap::new();
    for (at, held) in st.at.iter().zip(&st.held) {
        if let (Some(_), Some(why)) = (at, held)
            && *why != MOVED
        {
            *pinned.entry(why).or_default() += 1;
        }
    }
    let pinned = if pinned.is_empty() {
        String::new()
    } else {
        format!("; VMs that may not move now: {}", placement::tally(pinned))
    };
    if moves.is_empty() {
        return format!(
            "imbalance {start:.1} points, over the target {:.1}, but no move gains enough (at least {:.1} points and its cost){pinned}",
            s.target, s.min_gain
        );
    }
    let tail = match (&stopped, end <= s.target) {
        (_, true) => String::new(),
        (Some(limit), false) => format!(", stopped by {limit}; the next run continues"),
        (None, false) => ", and no further move gains enough".to_string(),
    };
    format!(
        "imbalance {start:.1} points, over the target {:.1}: {} move(s) bring it to {end:.1}{tail}{}",
        s.target,
        moves.len(),
        if end <= s.target {
            String::new()
        } else {
            pinned
        }
    )
}

/// Fewest moves that could bring the imbalance to `target` (points), bounded from below two ways
/// and the larger taken: (1) a host whose own deviation from the mean exceeds `target × √n`
/// must shed (or gain) load by at least the difference, and each move changes one giver and one
/// taker; (2) the summed squared deviations must fall by their excess over `n × target²`, and
/// no single move removes more than the best any movable VM could between the most and the
/// least loaded hosts of today. The bound assumes the mean stays put (hosts of equal size) and
/// that no move raises a host above today's highest load or below today's lowest.
/// VMs that may not move at `now` (pinned, in cooldown) count for nothing.
pub fn lower_bound(hosts: &[Host], vms: &[Vm], s: &Settings, now: Timestamp) -> usize {
    let mut st = State::new(hosts, vms);
    st.hold(vms, s, now);
    lower_bound_of(&st, vms, s.target)
}

fn lower_bound_of(st: &State<'_>, vms: &[Vm], target: f64) -> usize {
    let n = st.hosts.len();
    if n < 2 || st.imbalance() <= target {
        return 0;
    }
    let t = target / 100.0;
    let band = t * (n as f64).sqrt();
    let means = st.means();
    let devs: Vec<(f64, f64)> = (0..n)
        .map(|h| (st.uc(h) - means.0, st.um(h) - means.1))
        .collect();
    // (1) per host.
    let mut out_needed = 0usize;
    let mut in_needed = 0usize;
    for (h, &(dc, dm)) in devs.iter().enumerate() {
        let norm = (dc * dc + dm * dm).sqrt();
        if norm <= band {
            continue;
        }
        if dc + dm > 0.0 {
            // Shedding a set S leaves |dev − ΣS| ≥ |dev| − Σ|s|: at least the k largest VMs
            // whose sizes add up to |dev| − band must leave.
            let cap = st.hosts[h].capacity;
            let mut sizes: Vec<f64> = st.on[h]
                .iter()
                .filter(|&&v| st.held[v].is_none())
                .map(|&v| {
                    let c = vms[v].demand.cpu_millis as f64 / cap.cpu_millis as f64;
                    let m = vms[v].demand.memory as f64 / cap.memory as f64;
                    (c * c + m * m).sqrt()
                })
                .collect();
            sizes.sort_by(|x, y| y.total_cmp(x));
            let mut left = norm - band;
            let mut k = 0;
            for size in sizes {
                if left <= 0.0 {
                    break;
                }
                left -= size;
                k += 1;
            }
            out_needed += k.max(1);
        } else {
            in_needed += 1;
        }
    }
    let per_host = out_needed.max(in_needed);
    // (2) summed squared deviations.
    let total: f64 = devs.iter().map(|(c, m)| c * c + m * m).sum();
    let excess = total - n as f64 * t * t;
    let (mut dmax, mut dmin) = ((f64::MIN, f64::MIN), (f64::MAX, f64::MAX));
    for &(c, m) in &devs {
        dmax = (dmax.0.max(c), dmax.1.max(m));
        dmin = (dmin.0.min(c), dmin.1.min(m));
    }
    let spread = (dmax.0 - dmin.0, dmax.1 - dmin.1);
    let (cap_c_min, cap_c_max, cap_m_min, cap_m_max) =
        st.hosts
            .iter()
            .fold((f64::MAX, 0.0f64, f64::MAX, 0.0f64), |(a, b, c, d), h| {
                let (hc, hm) = (h.capacity.cpu_millis as f64, h.capacity.memory as f64);
                (a.min(hc), b.max(hc), c.min(hm), d.max(hm))
            });
    let mut best_drop = 0.0f64;
    for (i, vm) in vms.iter().enumerate() {
        if st.held[i].is_some() || st.at[i].is_none() {
            continue;
        }
        // A move of utilisation vector s lowers the sum by at most 2 s·spread − 2|s|²; s lies
        // between the VM's demand over the largest and over the smallest host.
        let lo = (
            vm.demand.cpu_millis as f64 / cap_c_max,
            vm.demand.memory as f64 / cap_m_max,
        );
        let hi = (
            vm.demand.cpu_millis as f64 / cap_c_min,
            vm.demand.memory as f64 / cap_m_min,
        );
        let f =
            |s: (f64, f64)| 2.0 * (s.0 * spread.0 + s.1 * spread.1) - 2.0 * (s.0 * s.0 + s.1 * s.1);
        // The best scaling of the VM's vector between lo and hi.
        let dot = hi.0 * spread.0 + hi.1 * spread.1;
        let sq = hi.0 * hi.0 + hi.1 * hi.1;
        let mut drop = f(lo).max(f(hi));
        if sq > 0.0 {
            let lambda = dot / (2.0 * sq);
            let lam_lo = if hi.0 > 0.0 {
                lo.0 / hi.0
            } else if hi.1 > 0.0 {
                lo.1 / hi.1
            } else {
                1.0
            };
            if lambda > lam_lo && lambda < 1.0 {
                drop = drop.max(f((hi.0 * lambda, hi.1 * lambda)));
            }
        }
        best_drop = best_drop.max(drop);
    }
    let by_sum = if excess <= 0.0 {
        0
    } else if best_drop <= 0.0 {
        // Nothing can move: no plan reaches the target; the per-host bound stands.
        0
    } else {
        (excess / best_drop).ceil() as usize
    };
    per_host.max(by_sum)
}

#[cfg(test)]
mod tests;
