//! Application dependencies: cycles, tier order, and the failover stage order.
//!
//! A failover brings apps up tier by tier, and inside a tier in `depends_on` order: an
//! app starts only when every app it depends on is healthy. The resulting sequence of
//! *stages* (apps that can start together) drives both the RTO budget check and, later,
//! the failover planner. All algorithms here are iterative, so a chain of 10,000
//! dependencies cannot overflow the stack.

use std::collections::HashMap;

use super::Spans;
use crate::diag::{Code, Diagnostic};
use crate::ids::AppId;
use crate::model::Topology;

/// Apps grouped into stages: every app of stage k depends only on apps of stages < k,
/// and every app of a tier starts after every app of the lower tiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyOrder {
    pub stages: Vec<Vec<AppId>>,
}

impl DependencyOrder {
    pub fn stage_of(&self) -> HashMap<&AppId, usize> {
        self.stages
            .iter()
            .enumerate()
            .flat_map(|(i, s)| s.iter().map(move |a| (a, i)))
            .collect()
    }
}

/// Report cycles and tier-order problems; return the stage order when there are none.
pub(crate) fn check(
    topo: &Topology,
    spans: &Spans,
    diags: &mut Vec<Diagnostic>,
) -> Option<DependencyOrder> {
    let idx: HashMap<&AppId, usize> = topo
        .apps
        .iter()
        .enumerate()
        .map(|(i, a)| (&a.id, i))
        .collect();
    // Edges app -> dependency, over apps that made it into the model.
    let edges: Vec<Vec<usize>> = topo
        .apps
        .iter()
        .map(|a| {
            a.depends_on
                .iter()
                .filter_map(|d| idx.get(d).copied())
                .collect()
        })
        .collect();

    let mut ok = true;
    for cycle in cycles(&edges) {
        ok = false;
        let names: Vec<&str> = cycle.iter().map(|&i| topo.apps[i].id.as_str()).collect();
        let first = &topo.apps[cycle[0]];
        let next = &topo.apps[cycle[1 % cycle.len()]].id;
        let span = spans
            .app
            .get(&first.id)
            .and_then(|s| s.deps.get(next).cloned());
        let path = names
            .iter()
            .chain(std::iter::once(&names[0]))
            .copied()
            .collect::<Vec<_>>()
            .join(" → ");
        diags.push(
            Diagnostic::error(Code::DependencyCycle, span, format!("dependency cycle: {path}"))
                .with_hint("apps start in depends_on order, so a cycle can never start; remove one of these dependencies"),
        );
    }
    for (i, a) in topo.apps.iter().enumerate() {
        for &d in &edges[i] {
            let dep = &topo.apps[d];
            if dep.tier > a.tier {
                ok = false;
                let span = spans
                    .app
                    .get(&a.id)
                    .and_then(|s| s.deps.get(&dep.id).cloned());
                diags.push(
                    Diagnostic::error(
                        Code::TierOrder,
                        span,
                        format!("app `{}` (tier {}) depends on `{}` of a later tier ({})", a.id, a.tier, dep.id, dep.tier),
                    )
                    .with_hint(format!("a dependency must be up first: move `{}` to tier {} or lower, or `{}` to tier {} or higher", dep.id, a.tier, a.id, dep.tier)),
                );
            }
        }
    }
    ok.then(|| stages(topo, &edges))
}

/// The stage order of a topology whose dependencies are acyclic and tier-ordered.
/// Returns `None` when they are not (use validation to learn why).
pub fn dependency_order(topo: &Topology) -> Option<DependencyOrder> {
    let mut diags = Vec::new();
    check(topo, &Spans::default(), &mut diags)
}

fn stages(topo: &Topology, edges: &[Vec<usize>]) -> DependencyOrder {
    // Kahn's algorithm gives a topological rank; processing apps by (tier, rank) visits
    // every dependency before its dependents because dependencies never have a later tier.
    let n = topo.apps.len();
    let mut indegree = vec![0usize; n];
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, deps) in edges.iter().enumerate() {
        indegree[i] = deps.len();
        for &d in deps {
            dependents[d].push(i);
        }
    }
    let mut rank = vec![0usize; n];
    let mut queue: std::collections::VecDeque<usize> =
        (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut next = 0;
    while let Some(i) = queue.pop_front() {
        rank[i] = next;
        next += 1;
        for &j in &dependents[i] {
            indegree[j] -= 1;
            if indegree[j] == 0 {
                queue.push_back(j);
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (topo.apps[i].tier, rank[i]));

    let mut stage = vec![0usize; n];
    let mut tier_base = 0; // first stage of the current tier
    let mut max_stage_so_far: Option<usize> = None;
    let mut current_tier = None;
    for &i in &order {
        let tier = topo.apps[i].tier;
        if current_tier != Some(tier) {
            current_tier = Some(tier);
            tier_base = max_stage_so_far.map_or(0, |m| m + 1);
        }
        let s = edges[i]
            .iter()
            .map(|&d| stage[d] + 1)
            .fold(tier_base, usize::max);
        stage[i] = s;
        max_stage_so_far = Some(max_stage_so_far.map_or(s, |m| m.max(s)));
    }
    let count = max_stage_so_far.map_or(0, |m| m + 1);
    let mut stages = vec![Vec::new(); count];
    for &i in &order {
        stages[stage[i]].push(topo.apps[i].id.clone());
    }
    DependencyOrder { stages }
}

/// Every cycle (one per strongly connected component with a cycle), as a path of
/// node indices, found with an iterative Tarjan.
fn cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut index = vec![usize::MAX; n];
    let mut low = vec![0usize; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut counter = 0;
    let mut sccs: Vec<Vec<usize>> = Vec::new();
    for root in 0..n {
        if index[root] != usize::MAX {
            continue;
        }
        let mut call: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = counter;
        low[root] = counter;
        counter += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut ei)) = call.last_mut() {
            if let Some(&w) = edges[v].get(*ei) {
                *ei += 1;
                if index[w] == usize::MAX {
                    index[w] = counter;
                    low[w] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    call.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
            } else {
                call.pop();
                if let Some(&(parent, _)) = call.last() {
                    low[parent] = low[parent].min(low[v]);
                }
                if low[v] == index[v] {
                    let mut comp = Vec::new();
                    while let Some(w) = stack.pop() {
                        on_stack[w] = false;
                        comp.push(w);
                        if w == v {
                            break;
                        }
                    }
                    let self_loop = comp.len() == 1 && edges[v].contains(&v);
                    if comp.len() > 1 || self_loop {
                        sccs.push(comp);
                    }
                }
            }
        }
    }
    sccs.into_iter().map(|c| cycle_path(edges, &c)).collect()
}

/// A concrete cycle inside one strongly connected component: walk edges that stay in the
/// component until a node repeats.
fn cycle_path(edges: &[Vec<usize>], comp: &[usize]) -> Vec<usize> {
    let members: std::collections::HashSet<usize> = comp.iter().copied().collect();
    let start = comp.iter().copied().min().unwrap_or(0);
    let mut pos: HashMap<usize, usize> = HashMap::new();
    let mut path = Vec::new();
    let mut v = start;
    loop {
        if let Some(&p) = pos.get(&v) {
            return path.split_off(p);
        }
        pos.insert(v, path.len());
        path.push(v);
        match edges[v].iter().copied().find(|w| members.contains(w)) {
            Some(w) => v = w,
            None => return path,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_every_cycle_including_self_loops() {
        // 0 -> 1 -> 2 -> 0, 3 -> 3, 4 -> 0 (not in a cycle)
        let edges = vec![vec![1], vec![2], vec![0], vec![3], vec![0]];
        let mut found = cycles(&edges);
        found.iter_mut().for_each(|c| c.sort());
        found.sort();
        assert_eq!(found, vec![vec![0, 1, 2], vec![3]]);
    }

    #[test]
    fn a_long_chain_does_not_overflow_the_stack() {
        let n = 200_000;
        let mut edges: Vec<Vec<usize>> = (0..n)
            .map(|i| if i + 1 < n { vec![i + 1] } else { vec![] })
            .collect();
        assert!(cycles(&edges).is_empty());
        edges[n - 1].push(0);
        let c = cycles(&edges);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].len(), n);
    }
}
