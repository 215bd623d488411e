//! The metadata store suite, run against every implementation: the file
//! store always, and the etcd store against the etcd named by
//! `STRATA_TEST_ETCD` (`http://127.0.0.1:2379`), which `tests/run.sh`
//! starts. Each etcd test uses its own cluster name, so one etcd serves all.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_cluster::controller::{self, Dice, NewTopic};
use strata_cluster::etcd::EtcdStore;
use strata_cluster::file::FileStore;
use strata_cluster::store::wait_for_revision;
use strata_cluster::{
    BrokerRegistration, ClusterConfig, Expect, Fence, MetaOp, MetadataStore, StoreError,
};
use uuid::Uuid;

fn etcd() -> Option<String> {
    let e = std::env::var("STRATA_TEST_ETCD")
        .ok()
        .filter(|e| !e.is_empty());
    if e.is_none() {
        eprintln!("STRATA_TEST_ETCD is not set: etcd store tests skipped (tests/run.sh sets it)");
    }
    e
}

fn registration(id: i32, incarnation: Uuid) -> BrokerRegistration {
    BrokerRegistration {
        id,
        host: "127.0.0.1".into(),
        port: 9092 + id,
        rack: None,
        http: String::new(),
        incarnation,
        shutting_down: false,
        listeners: Default::default(),
        epoch: 0,
    }
}

fn config(endpoint: &str, name: &str) -> ClusterConfig {
    ClusterConfig {
        etcd_endpoints: vec![endpoint.to_string()],
        name: name.to_string(),
        session_timeout_ms: 2_000,
        etcd_request_timeout_ms: 2_000,
        ..ClusterConfig::default()
    }
}

async fn start(endpoint: &str, name: &str, id: i32, incarnation: Uuid) -> Arc<EtcdStore> {
    EtcdStore::start(
        config(endpoint, name),
        registration(id, incarnation),
        None,
        None,
    )
    .await
    .unwrap_or_else(|e| panic!("broker {id} cannot start: {e}"))
}

async fn controller_epoch(store: &dyn MetadataStore, within: Duration) -> i64 {
    let deadline = Instant::now() + within;
    loop {
        if let Some(e) = store.session().controller_epoch() {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no controller role within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Creation, conditional partition writes and deletion, as every store must do them.
async fn commit_semantics(store: &dyn MetadataStore) {
    let epoch = controller_epoch(store, Duration::from_secs(10)).await;
    let fence = Fence::Controller(epoch);
    let image = store.image();
    let topic = NewTopic {
        name: "orders".into(),
        partitions: 3,
        replication_factor: 1,
        assignments: None,
        configs: BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]),
    };
    let id = Uuid::new_v4();
    let (_, commits) = controller::plan_create_topic(&image, &topic, id, Dice::roll()).unwrap();
    let mut rx = store.subscribe();
    let mut revision = 0;
    for ops in commits.clone() {
        revision = store.commit(fence, ops).await.unwrap();
    }
    assert!(wait_for_revision(&mut rx, revision, Duration::from_secs(5)).await);
    let img = store.image();
    assert_eq!(img.topics["orders"].configs["retention.ms"], "1000");
    let p0 = img.partition(id, 0).expect("partition 0").clone();
    assert_eq!(p0.value.leader, store.session().broker_id());
    assert!(img.leader_is_current(&p0.value));

    // Creating it again fails and changes nothing.
    let again = store.commit(fence, commits[0].clone()).await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");

    // A partition write expecting an old revision loses.
    let mut next = p0.value.clone();
    next.leader_epoch += 1;
    next.partition_epoch += 1;
    let write = |expect| MetaOp::PutPartition {
        partition: strata_cluster::TopicPartition {
            topic_id: id,
            index: 0,
        },
        state: next.clone(),
        expect,
    };
    let rev = store
        .commit(fence, vec![write(Expect::Revision(p0.revision))])
        .await
        .unwrap();
    let stale = store
        .commit(fence, vec![write(Expect::Revision(p0.revision))])
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict(_))), "{stale:?}");
    assert!(wait_for_revision(&mut rx, rev, Duration::from_secs(5)).await);
    assert_eq!(
        store.image().partition(id, 0).unwrap().value.leader_epoch,
        p0.value.leader_epoch + 1
    );

    // Deletion takes the partition states with it.
    let del = controller::plan_delete_topic(&store.image(), "orders").unwrap();
    let rev = store.commit(fence, vec![del]).await.unwrap();
    assert!(wait_for_revision(&mut rx, rev, Duration::from_secs(5)).await);
    let img = store.image();
    assert!(img.topics.is_empty());
    assert!(img.partition(id, 0).is_none());

    // Producer id blocks never overlap.
    let a = store.allocate_producer_ids(1000).await.unwrap();
    let b = store.allocate_producer_ids(1000).await.unwrap();
    assert!(b >= a + 1000 || a >= b + 1000, "{a} and {b} overlap");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path(), registration(0, Uuid::new_v4())).unwrap();
    commit_semantics(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_commits() {
    let Some(endpoint) = etcd() else { return };
    let store = start(
        &endpoint,
        &format!("t-{}", Uuid::new_v4()),
        0,
        Uuid::new_v4(),
    )
    .await;
    commit_semantics(store.as_ref()).await;
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_controller_cannot_write() {
    let Some(endpoint) = etcd() else { return };
    let name = format!("t-{}", Uuid::new_v4());
    let a = start(&endpoint, &name, 0, Uuid::new_v4()).await;
    let first = controller_epoch(a.as_ref(), Duration::from_secs(5)).await;
    let b = start(&endpoint, &name, 1, Uuid::new_v4()).await;
    assert_eq!(
        b.session().controller_epoch(),
        None,
        "one controller at a time"
    );
    // The controller leaves; the other broker takes over with a new epoch.
    a.close().await;
    let second = controller_epoch(b.as_ref(), Duration::from_secs(5)).await;
    assert!(second > first);
    let topic = NewTopic {
        name: "t".into(),
        partitions: 1,
        replication_factor: 1,
        assignments: None,
        configs: BTreeMap::new(),
    };
    let (_, commits) =
        controller::plan_create_topic(&b.image(), &topic, Uuid::new_v4(), Dice::roll()).unwrap();
    let stale = b.commit(Fence::Controller(first), commits[0].clone()).await;
    assert!(matches!(stale, Err(StoreError::Fenced(_))), "{stale:?}");
    assert!(
        b.image().topics.is_empty(),
        "the fenced write changed nothing"
    );
    b.commit(Fence::Controller(second), commits[0].clone())
        .await
        .unwrap();
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_id_registered_elsewhere_is_refused_but_a_restart_takes_over() {
    let Some(endpoint) = etcd() else { return };
    let name = format!("t-{}", Uuid::new_v4());
    let dir = Uuid::new_v4();
    let first = start(&endpoint, &name, 3, dir).await;
    let epoch = first.session().broker_epoch();
    // Another data directory with the same id: refused once the wait for
    // the registration to expire runs out (it is kept alive).
    let started = Instant::now();
    let dup = EtcdStore::start(
        config(&endpoint, &name),
        registration(3, Uuid::new_v4()),
        None,
        None,
    )
    .await;
    match dup {
        Err(StoreError::Misconfigured(m)) => assert!(m.contains("broker id 3"), "{m}"),
        other => panic!("expected a duplicate id error, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    // The same data directory (a restart after a crash) replaces it at once.
    let started = Instant::now();
    let again = start(&endpoint, &name, 3, dir).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        again.session().broker_epoch() > epoch,
        "a new registration, a new epoch"
    );
    again.close().await;
    first.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_another_cluster_is_refused() {
    let Some(endpoint) = etcd() else { return };
    let name = format!("t-{}", Uuid::new_v4());
    let e = EtcdStore::start(
        config(&endpoint, &name),
        registration(0, Uuid::new_v4()),
        Some("someOtherClusterId0000".into()),
        None,
    )
    .await;
    assert!(
        matches!(&e, Err(StoreError::Misconfigured(m)) if m.contains("belongs to cluster")),
        "{e:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_an_error_not_a_hang() {
    let started = Instant::now();
    let e = EtcdStore::start(
        config("http://127.0.0.1:9", "x"),
        registration(0, Uuid::new_v4()),
        None,
        None,
    )
    .await;
    assert!(
        matches!(&e, Err(StoreError::Unavailable(m)) if m.contains("cannot reach etcd")),
        "{e:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lease_means_a_new_registration_and_epoch() {
    let Some(endpoint) = etcd() else { return };
    let name = format!("t-{}", Uuid::new_v4());
    let store = start(&endpoint, &name, 0, Uuid::new_v4()).await;
    let epoch = store.session().broker_epoch();
    assert!(store.session().can_lead());
    // Revoke the broker's lease behind its back, as an expiry would.
    let mut client = etcd_client::Client::connect([endpoint.as_str()], None)
        .await
        .unwrap();
    let key = format!("/strata/{name}/brokers/0");
    let lease = client.get(key, None).await.unwrap().kvs()[0].lease();
    client.lease_revoke(lease).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.session().broker_epoch() == epoch {
        assert!(Instant::now() < deadline, "no re-registration");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(store.session().broker_epoch() > epoch);
    let img_ok = tokio::time::timeout(Duration::from_secs(5), async {
        let mut rx = store.subscribe();
        let ok = rx
            .wait_for(|img| img.brokers.get(&0).is_some_and(|b| b.epoch > epoch))
            .await
            .is_ok();
        ok
    })
    .await
    .unwrap_or(false);
    assert!(img_ok, "the image shows the new registration");
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_ids_are_unique_across_brokers() {
    let Some(endpoint) = etcd() else { return };
    let name = format!("t-{}", Uuid::new_v4());
    let a = start(&endpoint, &name, 0, Uuid::new_v4()).await;
    let b = start(&endpoint, &name, 1, Uuid::new_v4()).await;
    let grab = |s: Arc<EtcdStore>| async move {
        let mut v = Vec::new();
        for _ in 0..30 {
            v.push(s.allocate_producer_ids(1000).await.unwrap());
        }
        v
    };
    let (x, y) = tokio::join!(grab(a.clone()), grab(b.clone()));
    let mut all: Vec<i64> = x.into_iter().chain(y).collect();
    all.sort();
    assert!(all.windows(2).all(|w| w[1] - w[0] >= 1000), "{all:?}");
    a.close().await;
    b.close().await;
}
