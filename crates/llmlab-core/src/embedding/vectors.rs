//! Vector arithmetic on embeddings.

/// Scale to unit length; a zero vector stays zero (its direction is
/// undefined, and inventing one would hide a model fault).
pub fn l2_normalize(vector: &mut [f32]) {
    let norm = vector.iter().map(|x| f64::from(*x) * f64::from(*x)).sum::<f64>().sqrt();
    if norm > 0.0 {
        for x in vector.iter_mut() {
            *x = (f64::from(*x) / norm) as f32;
        }
    }
}

/// Keep the first `dimensions` components and restore unit length: how a
/// Matryoshka model's shorter embeddings are read.
pub fn truncate_dimensions(vector: &mut Vec<f32>, dimensions: usize) {
    vector.truncate(dimensions);
    l2_normalize(vector);
}

/// The cosine of the angle between two vectors (a dot product divided by
/// both lengths, so it is right for vectors of any length). Zero when
/// either is a zero vector.
pub fn cosine_similarity(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        aa += x * x;
        bb += y * y;
    }
    if aa == 0.0 || bb == 0.0 {
        return 0.0;
    }
    (dot / (aa.sqrt() * bb.sqrt())) as f32
}
