//! Cluster phases (preflight, packages, etcd, patroni, haproxy, verify).
