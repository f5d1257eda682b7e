//! Dense f64 linear algebra used by the subspace stage, on top of faer.
