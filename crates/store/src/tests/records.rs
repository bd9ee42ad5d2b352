//! Named records: written once (a taken name is refused and keeps its
//! value), replaced, listed by kind and by kind and tenant, deleted, and
//! still there for another store on the same database (a restart).

use serde_json::json;

use super::support::{TestStore, on_every_backend};

async fn records_are_kept_per_kind_tenant_and_name(t: &TestStore) {
    let r = t.store.records();
    assert!(
        r.insert("model", "acme", "a", &json!({"v": 1}))
            .await
            .unwrap()
    );
    assert!(
        !r.insert("model", "acme", "a", &json!({"v": 2}))
            .await
            .unwrap(),
        "a taken name is refused"
    );
    assert!(
        r.insert("model", "globex", "a", &json!({"v": 3}))
            .await
            .unwrap()
    );
    assert!(
        r.insert("upload", "acme", "a", &json!({"v": 4}))
            .await
            .unwrap()
    );
    assert_eq!(
        r.get("model", "acme", "a").await.unwrap(),
        Some(json!({"v": 1}))
    );
    let listed: Vec<(String, String)> = r
        .list("model")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.tenant, r.name))
        .collect();
    assert_eq!(
        listed,
        [("acme".into(), "a".into()), ("globex".into(), "a".into())]
    );
    assert!(
        r.insert("model", "acme", "b", &json!({"v": 6}))
            .await
            .unwrap()
    );
    assert!(
        r.insert("model", "acmex", "a", &json!({"v": 7}))
            .await
            .unwrap()
    );
    let of_acme: Vec<(String, String, serde_json::Value)> = r
        .list_of("model", "acme")
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.tenant, r.name, r.value))
        .collect();
    assert_eq!(
        of_acme,
        [
            ("acme".into(), "a".into(), json!({"v": 1})),
            ("acme".into(), "b".into(), json!({"v": 6})),
        ],
        "one tenant's records of one kind, by name: not another tenant's, not another kind's"
    );
    assert!(r.list_of("model", "initech").await.unwrap().is_empty());
    assert!(r.delete("model", "acme", "b").await.unwrap());
    assert!(r.delete("model", "acmex", "a").await.unwrap());
    r.put("model", "acme", "a", &json!({"v": 5})).await.unwrap();
    assert_eq!(
        r.get("model", "acme", "a").await.unwrap(),
        Some(json!({"v": 5}))
    );
    if t.kind != super::support::Kind::Memory {
        let again = t.reopen().await;
        assert_eq!(
            again.records().get("model", "acme", "a").await.unwrap(),
            Some(json!({"v": 5})),
            "kept across a restart"
        );
        again.close().await;
    }
    assert!(r.delete("model", "acme", "a").await.unwrap());
    assert!(!r.delete("model", "acme", "a").await.unwrap());
    assert_eq!(r.get("model", "acme", "a").await.unwrap(), None);
    assert_eq!(r.list("model").await.unwrap().len(), 1);
}

on_every_backend!(records_are_kept_per_kind_tenant_and_name);
