//! What StackGres does with the SGCluster and SGDbOps of configmap/, as this project relies on
//! it: a typed schema of the fields the manifests use, and the facts of StackGres's code the
//! hooks depend on, each with the source file it was read from. Source: ongres/stackgres,
//! tag 1.18.6 (unchanged on main at 085f6d0e), paths below relative to `stackgres-k8s/src/`.
//!
//! The schema is closed (`deny_unknown_fields`): a field the manifests start to use must be
//! added here, read from StackGres's Java class named on its struct. The upstream CRDs, when
//! present, add a full check on top (`super::crd`).

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::kube::{Container, EnvFromSource, EnvVar, ObjectMeta, Volume, VolumeMount};

pub const API_VERSION: &str = "stackgres.io/v1";

/// `common/.../crd/sgcluster/StackGresCluster.java`
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgCluster {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: SgClusterSpec,
}

/// `common/.../crd/sgcluster/StackGresClusterSpec.java`; `instances`, `postgres` and `pods` are
/// required by the CRD (`common/src/main/resources/crds/SGCluster.yaml`).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgClusterSpec {
    pub instances: i32,
    pub profile: Option<String>,
    pub postgres: SgPostgres,
    pub pods: SgPods,
    pub configurations: Option<SgConfigurations>,
    pub sg_instance_profile: Option<String>,
}

/// `common/.../crd/sgcluster/StackGresClusterPostgres.java`
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgPostgres {
    pub version: String,
    pub flavor: Option<String>,
}

/// `common/.../crd/sgcluster/StackGresClusterPods.java`. `customVolumes` are Kubernetes
/// Volumes (`common/.../crd/CustomVolume.java`), `customInitContainers` Containers
/// (`CustomContainer.java`), the maps are keyed by container name (`StackGresContainer.java`).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgPods {
    /// Required by the SGCluster CRD (`common/src/main/resources/crds/SGCluster.yaml`).
    pub persistent_volume: SgPersistentVolume,
    pub disable_connection_pooling: Option<bool>,
    pub disable_metrics_exporter: Option<bool>,
    pub disable_postgres_util: Option<bool>,
    pub disable_envoy: Option<bool>,
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default)]
    pub custom_volumes: Vec<Volume>,
    #[serde(default)]
    pub custom_containers: Vec<Container>,
    #[serde(default)]
    pub custom_init_containers: Vec<Container>,
    #[serde(default)]
    pub custom_volume_mounts: BTreeMap<String, Vec<VolumeMount>>,
    #[serde(default)]
    pub custom_init_volume_mounts: BTreeMap<String, Vec<VolumeMount>>,
    #[serde(default)]
    pub custom_env: BTreeMap<String, Vec<EnvVar>>,
    #[serde(default)]
    pub custom_init_env: BTreeMap<String, Vec<EnvVar>>,
    #[serde(default)]
    pub custom_env_from: BTreeMap<String, Vec<EnvFromSource>>,
    #[serde(default)]
    pub custom_init_env_from: BTreeMap<String, Vec<EnvFromSource>>,
}

/// `common/.../crd/sgcluster/StackGresClusterPodsPersistentVolume.java` (`size` @NotNull)
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgPersistentVolume {
    pub size: String,
    pub storage_class: Option<String>,
}

/// `common/.../crd/sgcluster/StackGresClusterConfigurations.java`
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgConfigurations {
    pub sg_postgres_config: Option<String>,
    pub sg_pooling_config: Option<String>,
    pub patroni: Option<SgPatroni>,
}

/// `common/.../crd/sgcluster/StackGresClusterPatroni.java`; `initialConfig` is free-form
/// Patroni configuration (`StackGresClusterPatroniConfig.java extends JsonObject`).
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgPatroni {
    pub initial_config: Option<serde_json::Map<String, Value>>,
    pub dynamic_config: Option<serde_json::Map<String, Value>>,
}

/// `common/.../crd/sgdbops/StackGresDbOps.java`
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgDbOps {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: SgDbOpsSpec,
}

/// `common/.../crd/sgdbops/DbOpsOperation.java` (the ones the manifests use)
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub enum DbOpsOperation {
    Restart,
    Vacuum,
    Repack,
    SecurityUpgrade,
    MinorVersionUpgrade,
}

/// `common/.../crd/sgdbops/StackGresDbOpsSpec.java` (`sgCluster` @NotEmpty, `op` @ValidEnum)
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgDbOpsSpec {
    pub sg_cluster: String,
    pub op: DbOpsOperation,
    pub run_at: Option<String>,
    pub timeout: Option<String>,
    pub max_retries: Option<i32>,
    pub restart: Option<SgDbOpsRestart>,
}

/// `common/.../crd/sgdbops/DbOpsMethodType.java`
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub enum DbOpsMethod {
    InPlace,
    ReducedImpact,
}

/// `common/.../crd/sgdbops/StackGresDbOpsRestart.java`
#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SgDbOpsRestart {
    pub method: Option<DbOpsMethod>,
    pub restart_primary_first: Option<bool>,
    pub only_pending_restart: Option<bool>,
}

/// Check one stackgres.io object against this schema.
pub fn check(doc: &Value) -> Result<(), String> {
    let api = doc["apiVersion"].as_str().unwrap_or_default();
    let kind = doc["kind"].as_str().unwrap_or_default();
    match (api, kind) {
        (API_VERSION, "SGCluster") => super::kube::parse::<SgCluster>(doc).map(drop),
        (API_VERSION, "SGDbOps") => super::kube::parse::<SgDbOps>(doc).map(drop),
        _ => Err(format!(
            "no schema for {api} {kind} in tests/support/src/manifests/stackgres.rs \
             (known: {API_VERSION} SGCluster, SGDbOps)"
        )),
    }
}

// ------------------------------------------------------------------ facts of StackGres's code

/// A custom volume `NAME` is added to the pod as `custom-NAME`, and the mounts of
/// customVolumeMounts / customInitContainers are copied as written.
pub const SRC_VOLUME_PREFIX: &str = "common/.../StackGresVolume.java (CUSTOM(\"custom-%s\")), \
    operator/.../factory/cluster/ClusterPodTemplateSpecFactory.java (renames customVolumes with \
    StackGresVolume.CUSTOM, copies the mounts as written)";
pub const VOLUME_PREFIX: &str = "custom-";

/// The containers of a cluster pod that `customEnv` / `customVolumeMounts` may name
/// (`StackGresContainer.java`, kind CLUSTER).
pub const SRC_CONTAINERS: &str = "common/.../StackGresContainer.java (StackGresGroupKind.CLUSTER)";
pub const POD_CONTAINERS: &[&str] = &[
    "patroni",
    "envoy",
    "pgbouncer",
    "prometheus-postgres-exporter",
    "postgres-util",
    "fluent-bit",
    "fluentd",
    "cluster-controller",
];

/// Environment variables StackGres sets on the patroni container itself; `customEnv` is
/// appended without de-duplication, and a name twice makes the API server refuse the
/// server-side apply of the StatefulSet.
pub const SRC_ENV: &str = "operator/.../factory/cluster/patroni/PatroniEnvironmentVariables.java, \
    operator/.../factory/cluster/PostgresEnvironmentVariables.java; customEnv appended as is by \
    operator/.../factory/AbstractContainerCustomEnvDecorator.java (setCustomEnv)";
pub const PATRONI_ENV: &[&str] = &[
    "PATRONI_NAME",
    "POD_IP",
    "POD_NAME",
    "CLUSTER_UID",
    "PATRONI_RESTAPI_CONNECT_ADDRESS",
    "PATRONI_READ_ONLY_SERVICE_NAME",
    "REPLICATION_SERVICE_PORT",
    "INITDB_AUTH_HOST",
    "REPLICATION_INITIALIZATION_FROM_BACKUP",
    "REPLICATION_INITIALIZATION_FROM_REPLICA",
    "REPLICATE_FROM_BACKUP",
    "RECOVERY_FROM_BACKUP",
    "RECOVERY_TARGET",
    "RECOVERY_TARGET_TIMELINE",
    "RECOVERY_TARGET_INCLUSIVE",
    "RECOVERY_TARGET_NAME",
    "RECOVERY_TARGET_XID",
    "RECOVERY_TARGET_LSN",
    "RECOVERY_TARGET_TIME",
    "PGUSER",
    "PGDATABASE",
];

/// Patroni's REST API in a cluster pod: plain HTTP, every address, port 8009 (8008 is
/// Envoy's entry port, off by default).
pub const SRC_REST: &str = "operator/.../factory/cluster/patroni/PatroniConfigMap.java \
    (PATRONI_RESTAPI_LISTEN \"*:\" + EnvoyUtil.PATRONI_PORT), common/.../EnvoyUtil.java \
    (PATRONI_PORT = 8009, PATRONI_ENTRY_PORT = 8008)";
pub const PATRONI_REST_PORT: u16 = 8009;

/// `patronictl` in the patroni container is a wrapper that passes the configuration itself.
pub const SRC_PATRONICTL: &str = "operator/src/main/resources/templates/patronictl \
    (exec /usr/bin/patronictl -c \"$PATRONI_CONFIG_FILE\" \"$@\")";

/// On an existing cluster only these keys of `initialConfig.postgresql` may change, and the
/// cluster-controller writes `callbacks` and `before_stop` into Patroni's config and reloads it.
pub const SRC_INITIAL: &str = "operator/.../validation/cluster/PatroniInitialConfigValidator.java \
    (pg_ctl_timeout, callbacks, pre_promote, before_stop; anything else: \"Cannot update patroni \
    initial configuration\"), cluster-controller/.../PatroniReconciliator.java (rewrites \
    callbacks / before_stop in /etc/patroni/config.yml, reloads Patroni)";
pub const INITIAL_CONFIG_CHANGEABLE: &[&str] =
    &["before_stop", "callbacks", "pre_promote", "pg_ctl_timeout"];

/// The primary (read-write) Service is named like the cluster; `<cluster>-primary` is the
/// deprecated name.
pub const SRC_SERVICE: &str = "common/.../PatroniUtil.java (readWriteName = the cluster's name; \
    DEPRECATED_READ_WRITE_SERVICE \"-primary\"), common/.../EnvoyUtil.java (PG_PORT = 5432)";
pub const PRIMARY_PORT: u16 = 5432;

/// Pods run as uid/gid 999 with fsGroup 999 (unless the operator runs with arbitrary users).
pub const SRC_UID: &str =
    "operator/.../factory/PodSecurityFactory.java (USER = 999L, GROUP = 999L, fsGroup GROUP)";
pub const POD_UID: u32 = 999;

/// The cluster's StatefulSet updates pods `OnDelete`: a changed pod template (new hook
/// ConfigMaps) reaches a pod only when it is restarted, which an SGDbOps restart does.
pub const SRC_ROLLOUT: &str = "operator/.../factory/cluster/ClusterStatefulSet.java \
    (updateStrategy OnDelete, serviceName = the cluster's name)";
