//! The processes that train one model together (data parallelism). Each rank takes an
//! equal share of every step's micro-batches, sums its gradients locally, and the ranks
//! add their sums with an all-reduce; every rank then clips and steps the same weights.
//!
//! Gradients are summed in f64 on every path, one process or many: a sum of a few f32
//! values of similar size is exact in f64, so the total does not depend on how the
//! micro-batches were split between ranks, and K processes follow the single-process loss
//! curve (to the bit in the runs measured; see `tests/data_parallel.rs`).

use std::sync::{Arc, Barrier, Mutex};

use crate::error::Result;

/// A group of ranks that sum vectors together. Every rank must make the same calls in the
/// same order, as with MPI collectives.
pub trait Collective {
    /// This process's index, 0 ..size().
    fn rank(&self) -> usize;
    /// How many ranks train together.
    fn size(&self) -> usize;
    /// Replaces `values` with their element-wise sum over all ranks.
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Rank 0 writes the run directory; the others only compute.
    fn is_leader(&self) -> bool {
        self.rank() == 0
    }
}

/// One process training alone.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
}

/// Ranks as threads of one process, for tests of the data-parallel loop without MPI.
/// Sums in rank order.
pub struct ThreadGroup {
    rank: usize,
    shared: Arc<Shared>,
}

struct Shared {
    size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Vec<f64>>>,
}

impl ThreadGroup {
    /// `size` handles, one per thread.
    pub fn new(size: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            size,
            barrier: Barrier::new(size),
            slots: Mutex::new(vec![Vec::new(); size]),
        });
        (0..size)
            .map(|rank| ThreadGroup {
                rank,
                shared: shared.clone(),
            })
            .collect()
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, Vec<Vec<f64>>> {
        // A rank that panicked poisons the lock; the others still see consistent data.
        self.shared.slots.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Collective for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
        self.slots()[self.rank] = values.to_vec();
        self.shared.barrier.wait();
        {
            let slots = self.slots();
            values.fill(0.0);
            for slot in slots.iter() {
                for (v, x) in values.iter_mut().zip(slot) {
                    *v += x;
                }
            }
        }
        // Nobody overwrites a slot until everyone has read them all.
        self.shared.barrier.wait();
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        self.shared.barrier.wait();
        Ok(())
    }
}

#[cfg(feature = "mpi")]
pub use self::mpi_world::MpiWorld;

#[cfg(feature = "mpi")]
mod mpi_world {
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    use mpi::topology::{Communicator, SimpleCommunicator};

    use super::Collective;
    use crate::error::{Error, Result};

    /// The processes started by `mpirun`, as MPI's world communicator. MPI's default
    /// error handler aborts the job on a communication failure, so the calls return Ok.
    pub struct MpiWorld {
        world: SimpleCommunicator,
        // Finalizes MPI when dropped; declared last so the communicator goes first.
        _universe: mpi::environment::Universe,
    }

    impl MpiWorld {
        /// Initialises MPI (once per process).
        pub fn init() -> Result<Self> {
            let universe = mpi::initialize().ok_or_else(|| {
                Error::Collective("MPI was already initialised in this process".into())
            })?;
            Ok(Self {
                world: universe.world(),
                _universe: universe,
            })
        }
    }

    impl Collective for MpiWorld {
        fn rank(&self) -> usize {
            self.world.rank() as usize
        }
        fn size(&self) -> usize {
            self.world.size() as usize
        }
        fn all_reduce_sum(&self, values: &mut [f64]) -> Result<()> {
            let send = values.to_vec();
            self.world
                .all_reduce_into(&send[..], values, SystemOperation::sum());
            Ok(())
        }
        fn barrier(&self) -> Result<()> {
            self.world.barrier();
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_group_sums_over_ranks() {
        let handles = ThreadGroup::new(3);
        let sums: Vec<Vec<f64>> = std::thread::scope(|s| {
            let joins: Vec<_> = handles
                .into_iter()
                .map(|g| {
                    s.spawn(move || {
                        let mut out = Vec::new();
                        for round in 0..3 {
                            let mut v = vec![g.rank() as f64 + round as f64, 1.0];
                            g.all_reduce_sum(&mut v).unwrap();
                            out.extend(v);
                        }
                        out
                    })
                })
                .collect();
            joins.into_iter().map(|j| j.join().unwrap()).collect()
        });
        for s in &sums {
            assert_eq!(s, &[3.0, 3.0, 6.0, 3.0, 9.0, 3.0]);
        }
    }
}
