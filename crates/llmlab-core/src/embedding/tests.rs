use super::*;

#[test]
fn normalising_gives_unit_length_and_keeps_zero_vectors_zero() {
    let mut v = vec![3.0, 4.0];
    l2_normalize(&mut v);
    assert_eq!(v, [0.6, 0.8]);
    let mut zero = vec![0.0; 3];
    l2_normalize(&mut zero);
    assert_eq!(zero, [0.0; 3]);
}

#[test]
fn cosine_is_not_a_dot_product() {
    // Same direction, different lengths: cosine 1, dot product 8.
    assert!((cosine_similarity(&[1.0, 1.0], &[4.0, 4.0]) - 1.0).abs() < 1e-6);
    assert!((cosine_similarity(&[1.0, 0.0], &[0.0, 2.0])).abs() < 1e-6);
    assert!((cosine_similarity(&[1.0, 0.0], &[-3.0, 0.0]) + 1.0).abs() < 1e-6);
    assert_eq!(cosine_similarity(&[0.0, 0.0], &[1.0, 0.0]), 0.0);
}

#[test]
fn matryoshka_truncation_renormalises() {
    let mut v = vec![0.6, 0.0, 0.8, 0.0];
    truncate_dimensions(&mut v, 2);
    assert_eq!(v, [1.0, 0.0]);
}

#[test]
fn windows_cover_every_token_once() {
    let tokens: Vec<u32> = (0..10).collect();
    let windows = split_into_windows(&tokens, 4);
    assert_eq!(windows, [&[0, 1, 2, 3][..], &[4, 5, 6, 7], &[8, 9]]);
    assert!(split_into_windows::<u32>(&[], 4).is_empty());
}

#[test]
fn chunks_combine_by_token_weighted_mean() {
    // Mean-pooled windows of 3 and 1 tokens: the combined vector is the
    // mean over all 4 tokens.
    let combined = combine_chunks(&[
        RawEmbedding {
            vector: vec![1.0, 0.0],
            tokens: 3,
        },
        RawEmbedding {
            vector: vec![5.0, 4.0],
            tokens: 1,
        },
    ]);
    assert_eq!(combined.vector, [2.0, 1.0]);
    assert_eq!(combined.tokens, 4);
}

#[test]
fn ranking_is_by_cosine_best_first_with_top_k() {
    let query = [1.0, 0.0];
    let docs = vec![vec![0.0, 1.0], vec![10.0, 1.0], vec![1.0, 1.0], vec![-1.0, 0.0]];
    let ranked = rank_by_similarity(&query, &docs, Some(3));
    let order: Vec<usize> = ranked.iter().map(|r| r.index).collect();
    assert_eq!(order, [1, 2, 0]);
    assert!(ranked[0].score > 0.99 && ranked[0].score <= 1.0);
}

#[test]
fn requests_are_validated_with_the_field_named() {
    let param = |r: EmbeddingRequest| r.validate().unwrap_err().param.unwrap();
    assert_eq!(param(EmbeddingRequest::default()), "input");
    let request = EmbeddingRequest {
        inputs: vec![EmbedInput::Text("a".into()), EmbedInput::Text(String::new())],
        ..Default::default()
    };
    assert_eq!(param(request), "input[1]");
    let request = EmbeddingRequest {
        inputs: vec![EmbedInput::Tokens(vec![1])],
        dimensions: Some(0),
        ..Default::default()
    };
    assert_eq!(param(request), "dimensions");
    let similarity = SimilarityRequest {
        query: "q".into(),
        documents: vec!["a".into(), String::new()],
        ..Default::default()
    };
    assert_eq!(similarity.validate().unwrap_err().param.unwrap(), "documents[1]");
}
