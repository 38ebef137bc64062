//! Singular value decomposition for `lora_delta_w_svd` adapter averaging: one-sided Jacobi
//! (Hestenes) in f64, accurate to rounding for the matrix sizes of adapter deltas. No dependency
//! of this workspace offers an SVD.

/// `m` (rows x cols, row-major) = U diag(S) V^T, singular values descending. Returns (U as
/// rows x r, S, V^T as r x cols) with r = min(rows, cols).
pub fn svd(m: &[f64], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    if cols > rows {
        // Decompose the transpose: M^T = V S U^T.
        let t = transpose(m, rows, cols);
        let (u, s, vt) = svd(&t, cols, rows);
        let r = s.len();
        return (transpose(&vt, r, rows), s, transpose(&u, cols, r));
    }
    // Columns of `a` are rotated until orthogonal; `v` accumulates the rotations.
    let (n, mrows) = (cols, rows);
    let mut a = m.to_vec();
    let mut v = vec![0f64; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..60 {
        let mut rotated = false;
        for p in 0..n {
            for q in p + 1..n {
                let (mut alpha, mut beta, mut gamma) = (0f64, 0f64, 0f64);
                for r in 0..mrows {
                    let (x, y) = (a[r * n + p], a[r * n + q]);
                    alpha += x * x;
                    beta += y * y;
                    gamma += x * y;
                }
                if gamma.abs() <= 1e-15 * (alpha * beta).sqrt() || gamma == 0.0 {
                    continue;
                }
                rotated = true;
                let zeta = (beta - alpha) / (2.0 * gamma);
                let t = zeta.signum() / (zeta.abs() + (1.0 + zeta * zeta).sqrt());
                let c = 1.0 / (1.0 + t * t).sqrt();
                let s = c * t;
                for r in 0..mrows {
                    let (x, y) = (a[r * n + p], a[r * n + q]);
                    a[r * n + p] = c * x - s * y;
                    a[r * n + q] = s * x + c * y;
                }
                for r in 0..n {
                    let (x, y) = (v[r * n + p], v[r * n + q]);
                    v[r * n + p] = c * x - s * y;
                    v[r * n + q] = s * x + c * y;
                }
            }
        }
        if !rotated {
            break;
        }
    }
    let norms: Vec<f64> = (0..n).map(|j| (0..mrows).map(|r| a[r * n + j] * a[r * n + j]).sum::<f64>().sqrt()).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&x, &y| norms[y].total_cmp(&norms[x]));
    let s: Vec<f64> = order.iter().map(|&j| norms[j]).collect();
    let mut u = vec![0f64; mrows * n];
    let mut vt = vec![0f64; n * n];
    for (k, &j) in order.iter().enumerate() {
        let sigma = norms[j];
        for r in 0..mrows {
            u[r * n + k] = if sigma > 0.0 { a[r * n + j] / sigma } else { 0.0 };
        }
        for c in 0..n {
            vt[k * n + c] = v[c * n + j];
        }
    }
    (u, s, vt)
}

fn transpose(m: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut t = vec![0f64; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(rows: usize, cols: usize) {
        let m: Vec<f64> = (0..rows * cols).map(|i| ((i * 37 % 11) as f64 - 5.0) / 3.0 + (i as f64).sin()).collect();
        let (u, s, vt) = svd(&m, rows, cols);
        let r = s.len();
        assert!(s.windows(2).all(|w| w[0] >= w[1]), "descending");
        for i in 0..rows {
            for j in 0..cols {
                let x: f64 = (0..r).map(|k| u[i * r + k] * s[k] * vt[k * cols + j]).sum();
                assert!((x - m[i * cols + j]).abs() < 1e-9, "{rows}x{cols} at ({i},{j}): {x} vs {}", m[i * cols + j]);
            }
        }
    }

    #[test]
    fn reconstructs_tall_and_wide_matrices() {
        check(7, 4);
        check(4, 7);
        check(6, 6);
    }
}
