//! Which topics anyone subscribed to: the broker asks before it hands a publish to the router.
//!
//! Almost every publish Fieldline reads is telemetry that only the pipeline wants. Sending each
//! one through rumqttd's router would cost a thread hand-off and a copy into a commit log per
//! message for nobody, so a publish goes to the router only when some subscription matches its
//! topic (or it is retained). Every subscription passes through our connections, so this set is
//! complete. Filters are kept in a tree of topic levels, so one check costs the depth of the
//! topic, not the number of subscriptions (every device subscribing to its own commands adds one
//! filter each).

use std::collections::HashMap;
use std::sync::RwLock;

#[derive(Default)]
pub(crate) struct Interest {
    root: RwLock<Node>,
}

#[derive(Default)]
struct Node {
    /// Filters that end exactly here.
    here: usize,
    /// Filters that end here with `#` (they match this level and everything below).
    rest: usize,
    /// Filters with `+` at this level.
    any: Option<Box<Node>>,
    children: HashMap<Box<str>, Node>,
}

impl Node {
    fn is_empty(&self) -> bool {
        self.here == 0 && self.rest == 0 && self.any.is_none() && self.children.is_empty()
    }

    fn add(&mut self, levels: &[&str]) {
        match levels.split_first() {
            None => self.here += 1,
            Some((&"#", _)) => self.rest += 1,
            Some((&"+", tail)) => self.any.get_or_insert_with(Box::default).add(tail),
            Some((level, tail)) => self.children.entry((*level).into()).or_default().add(tail),
        }
    }

    /// Returns whether the filter was there.
    fn remove(&mut self, levels: &[&str]) -> bool {
        match levels.split_first() {
            None => take_one(&mut self.here),
            Some((&"#", _)) => take_one(&mut self.rest),
            Some((&"+", tail)) => {
                let Some(any) = self.any.as_mut() else {
                    return false;
                };
                let removed = any.remove(tail);
                if any.is_empty() {
                    self.any = None;
                }
                removed
            }
            Some((level, tail)) => {
                let Some(child) = self.children.get_mut(*level) else {
                    return false;
                };
                let removed = child.remove(tail);
                if child.is_empty() {
                    self.children.remove(*level);
                }
                removed
            }
        }
    }

    /// Walks the topic's levels as they come (no allocation: this runs for every publish).
    fn matches(&self, mut levels: std::str::Split<'_, char>) -> bool {
        if self.rest > 0 {
            return true;
        }
        match levels.next() {
            None => self.here > 0,
            Some(level) => {
                self.any
                    .as_ref()
                    .is_some_and(|any| any.matches(levels.clone()))
                    || self.children.get(level).is_some_and(|c| c.matches(levels))
            }
        }
    }

    /// Adds to `out` every filter below this node that matches the rest of the topic;
    /// `path` holds the filter's levels down to here.
    fn collect<'t>(
        &self,
        mut levels: std::str::Split<'t, char>,
        path: &mut Vec<&'t str>,
        out: &mut Vec<String>,
    ) {
        if self.rest > 0 {
            path.push("#");
            out.push(path.join("/"));
            path.pop();
        }
        match levels.next() {
            None if self.here > 0 => out.push(path.join("/")),
            None => {}
            Some(level) => {
                if let Some(any) = &self.any {
                    path.push("+");
                    any.collect(levels.clone(), path, out);
                    path.pop();
                }
                if let Some(child) = self.children.get(level) {
                    path.push(level);
                    child.collect(levels, path, out);
                    path.pop();
                }
            }
        }
    }
}

fn take_one(count: &mut usize) -> bool {
    if *count == 0 {
        return false;
    }
    *count -= 1;
    true
}

impl Interest {
    /// Counts one more subscription to `filter` (a valid MQTT filter).
    pub(crate) fn add(&self, filter: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        self.write().add(&levels);
    }

    /// Forgets one subscription to `filter`.
    pub(crate) fn remove(&self, filter: &str) {
        let levels: Vec<&str> = filter.split('/').collect();
        self.write().remove(&levels);
    }

    /// Does any subscription match `topic`? Wildcards at the first level never match topics
    /// that start with `$` (MQTT §4.7.2).
    pub(crate) fn wanted(&self, topic: &[u8]) -> bool {
        let Ok(topic) = std::str::from_utf8(topic) else {
            return false;
        };
        let root = self
            .root
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if root.is_empty() {
            return false;
        }
        let mut levels = topic.split('/');
        if topic.starts_with('$') {
            let Some(first) = levels.next() else {
                return false;
            };
            return root.children.get(first).is_some_and(|c| c.matches(levels));
        }
        root.matches(levels)
    }

    /// The filters that match `topic`, as subscribed (for what the router will hold).
    pub(crate) fn matching(&self, topic: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        let Ok(topic) = std::str::from_utf8(topic) else {
            return out;
        };
        let root = self
            .root
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut levels = topic.split('/');
        let mut path = Vec::new();
        if topic.starts_with('$') {
            if let Some(child) = levels.next().and_then(|first| {
                path.push(first);
                root.children.get(first)
            }) {
                child.collect(levels, &mut path, &mut out);
            }
            return out;
        }
        root.collect(levels, &mut path, &mut out);
        out
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Node> {
        self.root
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::Interest;

    #[test]
    fn matches_like_mqtt_filters() {
        let interest = Interest::default();
        assert!(!interest.wanted(b"a/b"));
        interest.add("a/+/c");
        interest.add("d/#");
        interest.add("e");
        assert!(interest.wanted(b"a/b/c"));
        assert!(!interest.wanted(b"a/b"));
        assert!(!interest.wanted(b"a/b/c/d"));
        assert!(interest.wanted(b"d"), "d/# matches its parent level");
        assert!(interest.wanted(b"d/x/y"));
        assert!(interest.wanted(b"e"));
        assert!(!interest.wanted(b"e/f"));
        interest.remove("d/#");
        assert!(!interest.wanted(b"d/x"));
        interest.remove("a/+/c");
        interest.remove("e");
        assert!(!interest.wanted(b"a/b/c"));
        assert!(!interest.wanted(b"e"));
    }

    #[test]
    fn counts_subscriptions_to_the_same_filter() {
        let interest = Interest::default();
        interest.add("x/y");
        interest.add("x/y");
        interest.remove("x/y");
        assert!(interest.wanted(b"x/y"));
        interest.remove("x/y");
        assert!(!interest.wanted(b"x/y"));
        // Removing what is not there changes nothing.
        interest.remove("x/y");
        interest.remove("q/+");
        assert!(!interest.wanted(b"x/y"));
    }

    #[test]
    fn lists_the_filters_a_topic_matches() {
        let interest = Interest::default();
        for filter in ["a/+/c", "a/#", "a/b/c", "#", "+/+", "$SYS/#", "e"] {
            interest.add(filter);
        }
        let mut found = interest.matching(b"a/b/c");
        found.sort();
        assert_eq!(found, ["#", "a/#", "a/+/c", "a/b/c"]);
        let mut found = interest.matching(b"a/x");
        found.sort();
        assert_eq!(found, ["#", "+/+", "a/#"]);
        assert_eq!(interest.matching(b"$SYS/x"), ["$SYS/#"]);
        let mut found = interest.matching(b"a");
        found.sort();
        assert_eq!(found, ["#", "a/#"], "a/# matches its parent level");
    }

    #[test]
    fn wildcards_skip_dollar_topics() {
        let interest = Interest::default();
        interest.add("#");
        interest.add("+/status");
        assert!(!interest.wanted(b"$SYS/status"));
        assert!(interest.wanted(b"devices/status"));
        interest.add("$SYS/#");
        assert!(interest.wanted(b"$SYS/status"));
    }
}
