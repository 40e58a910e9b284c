//! RBAC: the ClusterRole against the calls the reflectors really make.

use std::{
    collections::BTreeSet,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use k8s_openapi::api::rbac::v1::ClusterRole;

use super::{kube_dir, strict, yaml_docs};

/// (verb, API group, resource) of every request the fake API server saw.
type Calls = Arc<Mutex<BTreeSet<(String, String, String)>>>;

/// What a request asks, in RBAC's terms.
fn rbac_request(method: &str, path: &str, query: &str) -> (String, String, String) {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match segs.as_slice() {
        ["api", _version, rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        // Discovery and other non-resource URLs.
        _ => return (method.to_lowercase(), "(non-resource)".into(), path.into()),
    };
    let (resource, name) = match rest {
        ["namespaces", _ns, resource, rest @ ..] => (*resource, rest.first()),
        [resource, rest @ ..] => (*resource, rest.first()),
        [] => return ("get".into(), "(discovery)".into(), path.into()),
    };
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    let verb = match (method, name.is_some(), watch) {
        ("GET", _, true) => "watch",
        ("GET", true, false) => "get",
        ("GET", false, false) => "list",
        ("POST", ..) => "create",
        ("PUT", ..) => "update",
        ("PATCH", ..) => "patch",
        ("DELETE", ..) => "delete",
        _ => "unknown",
    };
    (verb.into(), group.into(), resource.into())
}

fn list_kind(resource: &str) -> &'static str {
    match resource {
        "pods" => "PodList",
        "nodes" => "NodeList",
        "services" => "ServiceList",
        "endpointslices" => "EndpointSliceList",
        "replicasets" => "ReplicaSetList",
        "jobs" => "JobList",
        "ippools" => "IPPoolList",
        "blockaffinities" => "BlockAffinityList",
        "ipamblocks" => "IPAMBlockList",
        _ => "List",
    }
}

async fn fake_api(
    axum::extract::State(calls): axum::extract::State<Calls>,
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::{body::Body, http::header, response::IntoResponse as _};
    let query = uri.query().unwrap_or("");
    let (verb, group, resource) = rbac_request(method.as_str(), uri.path(), query);
    calls
        .lock()
        .unwrap()
        .insert((verb.clone(), group.clone(), resource.clone()));
    let version = uri
        .path()
        .split('/')
        .nth(if group.is_empty() { 2 } else { 3 });
    let api_version = match (group.as_str(), version) {
        ("", Some(v)) => v.to_owned(),
        (g, Some(v)) => format!("{g}/{v}"),
        _ => "v1".into(),
    };
    match verb.as_str() {
        "list" => axum::Json(serde_json::json!({
            "apiVersion": api_version,
            "kind": list_kind(&resource),
            "metadata": {"resourceVersion": "1"},
            "items": [],
        }))
        .into_response(),
        "watch" => {
            // No events; held open a while, as an idle watch is.
            let stream = futures::stream::once(async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                Ok::<_, std::convert::Infallible>(axum::body::Bytes::new())
            });
            (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(stream),
            )
                .into_response()
        }
        _ => (
            axum::http::StatusCode::FORBIDDEN,
            axum::Json(serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "reason": "Forbidden", "code": 403,
                "message": format!("{verb} {group}/{resource}: not for an observer"),
            })),
        )
            .into_response(),
    }
}

/// What a ClusterRole grants, as (verb, group, resource).
fn grants(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in role.rules.iter().flatten() {
        assert!(
            rule.resource_names.is_none() && rule.non_resource_urls.is_none(),
            "rules by resource name or URL are not expected: {rule:?}"
        );
        for verb in &rule.verbs {
            assert!(
                ["get", "list", "watch"].contains(&verb.as_str()),
                "the observer's ClusterRole is read-only; it grants {verb}"
            );
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for s in [verb, group, resource] {
                        assert!(!s.contains('*'), "no wildcards: {rule:?}");
                    }
                    out.insert((verb.clone(), group.clone(), resource.clone()));
                }
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_role_grants_exactly_what_the_reflectors_call() {
    let calls: Calls = Arc::default();
    let app = axum::Router::new()
        .fallback(fake_api)
        .with_state(calls.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    let client = kube::Client::try_from(config).expect("a client for the fake API server");
    let changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let _stores = observer::sources::kube::start_with(client, changed)
        .await
        .expect("starting the reflectors");

    // Until every resource listed has been watched too, and nothing new
    // came for a while.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut last, mut stable_since) = (BTreeSet::new(), Instant::now());
    let seen = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = calls.lock().unwrap().clone();
        if now != last {
            (last, stable_since) = (now.clone(), Instant::now());
        }
        let listed: BTreeSet<_> = now
            .iter()
            .filter(|c| c.0 == "list")
            .map(|c| (&c.1, &c.2))
            .collect();
        let watched: BTreeSet<_> = now
            .iter()
            .filter(|c| c.0 == "watch")
            .map(|c| (&c.1, &c.2))
            .collect();
        if !listed.is_empty()
            && listed == watched
            && stable_since.elapsed() > Duration::from_millis(1500)
        {
            break now;
        }
        assert!(
            Instant::now() < deadline,
            "the reflectors did not settle: {now:?}"
        );
    };
    server.abort();

    // The reflectors watch what the code says it watches.
    let watched: BTreeSet<(String, String)> = observer::sources::kube::WATCHED
        .iter()
        .map(|(g, _, r)| (g.to_string(), r.to_string()))
        .collect();
    let called: BTreeSet<(String, String)> = seen
        .iter()
        .map(|(_, g, r)| (g.clone(), r.clone()))
        .collect();
    assert_eq!(called, watched, "the reflectors' calls and kube::WATCHED");

    let role_path = kube_dir().join("base/clusterrole.yaml");
    let docs = yaml_docs(&role_path);
    let role: ClusterRole = strict(&docs[0], &role_path.display().to_string());
    let granted = grants(&role);
    let missing: Vec<_> = seen.difference(&granted).collect();
    let unused: Vec<_> = granted.difference(&seen).collect();
    assert!(
        missing.is_empty() && unused.is_empty(),
        "the ClusterRole and the daemon disagree.\n  called but not granted: {missing:?}\n  granted but never called: {unused:?}"
    );
    eprintln!(
        "the reflectors made {} kinds of call, all granted: {seen:?}",
        seen.len()
    );
}
