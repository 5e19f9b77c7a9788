//! `llmlab bench` against an in-process fake server on a loopback socket:
//! the report must count exactly the tokens the server sent.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use llmlab_core::service::Service;
use llmlab_core::testing::{fake_registry, FakeFactory, Script};
use llmlab_server::bench::{run, BenchArgs};
use llmlab_server::http::{router, AppState, HttpConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_the_tokens_it_was_sent() {
    // Five text chunks per answer; the usage chunk says 5 tokens.
    let script = Script::text(&["a", "b", "c", "d", "e"]).with_delay(Duration::from_millis(2));
    let factory = Arc::new(FakeFactory::new(script));
    let service = Arc::new(Service::new(fake_registry(), Arc::clone(&factory) as _));
    let config = HttpConfig {
        api_key: None,
        max_body_bytes: 1 << 20,
        sse_keep_alive: Duration::from_secs(5),
        always_include_usage: false,
    };
    let state = AppState {
        service,
        config: Arc::new(config),
        shutdown: CancellationToken::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(state)).await.unwrap() });

    let args = BenchArgs {
        url: format!("http://{addr}/v1"),
        model: "fake-a".into(),
        concurrency: vec![1, 3],
        requests: 6,
        warmup: 1,
        prompt_tokens: 16,
        output_tokens: 5,
        distinct_prompts: true,
        timeout_secs: 30,
        json: true,
        quiet: true,
    };
    let reports = run(&args).await.unwrap();
    assert_eq!(reports.len(), 2);
    for report in &reports {
        assert_eq!((report.requests, report.errors), (6, 0));
        assert_eq!(report.output_tokens, 30);
        assert!(report.ttft_p50_ms > 0.0 && report.itl_p50_ms > 0.0);
        assert!(report.aggregate_tokens_per_second > 0.0);
    }
    // Warm-up plus both levels reached the pipeline, each asking for 5 tokens and ignoring EOS.
    let completions = factory.pipeline.completions.lock().unwrap();
    assert_eq!(completions.len(), 13);
    assert!(completions
        .iter()
        .all(|c| c.params.max_tokens == Some(5) && c.params.ignore_eos));
    // `--distinct-prompts`: no two requests share a first token.
    let firsts: std::collections::HashSet<&str> = completions.iter().map(|c| &c.prompt[..2]).collect();
    assert_eq!(firsts.len(), 13, "prompts share a start");
}
