//! Coefficients of an adapter in a subspace, reconstruction and errors.
use super::ModuleSubspace;
use crate::adapter::LoraModule;
use faer::Mat;

/// One module's coefficients: alpha_A [r x K_A], alpha_B [K_B x r].
#[derive(Clone, Debug)]
pub struct Coefficients {
    pub alpha_a: Mat<f64>,
    pub alpha_b: Mat<f64>,
}

/// Least-squares coefficients of `m` in `s` (alpha_A = A·V_Aᵀ, alpha_B = V_Bᵀ·B for orthonormal
/// bases), put in a canonical gauge so that project ∘ reconstruct is the identity.
pub fn project(m: &LoraModule, s: &ModuleSubspace) -> Coefficients {
    let _ = (m, s);
    todo!("subspace helper")
}

/// Â = alpha_A·V_A, B̂ = V_B·alpha_B.
pub fn reconstruct(c: &Coefficients, s: &ModuleSubspace) -> LoraModule {
    let _ = (c, s);
    todo!("subspace helper")
}

/// ||ΔW − ΔŴ||_F / ||ΔW||_F computed from r x r Gram traces, never forming out x in.
pub fn relative_error(original: &LoraModule, approx: &LoraModule) -> f64 {
    let _ = (original, approx);
    todo!("subspace helper")
}

/// Share of ||ΔW||²_F that lies inside the subspace: ||P_B·ΔW·P_A||² / ||ΔW||².
pub fn captured_energy(m: &LoraModule, s: &ModuleSubspace) -> f64 {
    let _ = (m, s);
    todo!("subspace helper")
}
