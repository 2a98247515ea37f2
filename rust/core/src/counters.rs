//! Named counters that many threads bump at once: the `stats()` of the
//! Python components on their hot paths (a call, an attempt, a request let
//! through). Each bump is one atomic add, where a lock taken around a
//! Python dict cost a few hundred nanoseconds per count.
//!
//! Each counter is exact; a snapshot reads them one after another, so under
//! concurrent bumps two counters of one snapshot may be a few bumps apart.

use std::sync::atomic::{AtomicI64, Ordering};

use crate::Error;

/// The most counters one set may have: the lookup by name is a scan.
pub const MAX_COUNTERS: usize = 64;

#[derive(Debug)]
pub struct Counters {
    names: Box<[Box<str>]>,
    values: Box<[AtomicI64]>,
}

impl Counters {
    /// Counters named `names`, each at 0. The names must be distinct, not
    /// empty, and at most [`MAX_COUNTERS`].
    pub fn new<S: Into<Box<str>>>(names: impl IntoIterator<Item = S>) -> Result<Self, Error> {
        let names: Vec<Box<str>> = names.into_iter().map(Into::into).collect();
        if names.len() > MAX_COUNTERS {
            return Err(Error::invalid(
                "names",
                format!("at most {MAX_COUNTERS} counters, got {}", names.len()),
            ));
        }
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() {
                return Err(Error::invalid(format!("names[{i}]"), "must not be empty"));
            }
            if names[..i].contains(name) {
                return Err(Error::invalid(
                    format!("names[{i}]"),
                    format!("'{name}' is named twice"),
                ));
            }
        }
        let values = names.iter().map(|_| AtomicI64::new(0)).collect();
        Ok(Counters {
            names: names.into_boxed_slice(),
            values,
        })
    }

    fn slot(&self, name: &str) -> Result<&AtomicI64, Error> {
        match self.names.iter().position(|n| &**n == name) {
            Some(i) => Ok(&self.values[i]),
            None => Err(Error::invalid("name", format!("no counter named '{name}'"))),
        }
    }

    /// Adds `n` (which may be negative) to the counter `name`; the sum wraps
    /// at the ends of `i64`, as no count of events reaches.
    pub fn add(&self, name: &str, n: i64) -> Result<(), Error> {
        self.slot(name)?.fetch_add(n, Ordering::Relaxed);
        Ok(())
    }

    /// The value of the counter `name`.
    pub fn get(&self, name: &str) -> Result<i64, Error> {
        Ok(self.slot(name)?.load(Ordering::Relaxed))
    }

    /// Each counter's name and value, in the order they were named.
    pub fn snapshot(&self) -> impl Iterator<Item = (&str, i64)> + '_ {
        self.names
            .iter()
            .zip(self.values.iter())
            .map(|(name, value)| (&**name, value.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn counts_by_name_and_refuses_what_it_does_not_know() {
        let c = Counters::new(["calls", "errors"]).unwrap();
        c.add("calls", 1).unwrap();
        c.add("calls", 2).unwrap();
        c.add("errors", -1).unwrap();
        assert_eq!(c.get("calls").unwrap(), 3);
        let all: Vec<_> = c.snapshot().collect();
        assert_eq!(all, vec![("calls", 3), ("errors", -1)]);
        let err = c.add("other", 1).unwrap_err().to_string();
        assert_eq!(err, "name: no counter named 'other'");
    }

    #[test]
    fn names_are_checked() {
        assert!(Counters::new(["a", "a"])
            .unwrap_err()
            .to_string()
            .starts_with("names[1]:"));
        assert!(Counters::new([""])
            .unwrap_err()
            .to_string()
            .starts_with("names[0]:"));
        let many: Vec<String> = (0..=MAX_COUNTERS).map(|i| format!("c{i}")).collect();
        assert!(Counters::new(many).is_err());
        assert!(Counters::new(Vec::<String>::new()).is_ok());
    }

    #[test]
    fn bumps_from_many_threads_are_all_counted() {
        let c = Arc::new(Counters::new(["n"]).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = Arc::clone(&c);
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        c.add("n", 1).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(c.get("n").unwrap(), 40_000);
    }

    #[test]
    fn a_sum_past_the_end_wraps_instead_of_panicking() {
        let c = Counters::new(["n"]).unwrap();
        c.add("n", i64::MAX).unwrap();
        c.add("n", 1).unwrap();
        assert_eq!(c.get("n").unwrap(), i64::MIN);
    }
}
