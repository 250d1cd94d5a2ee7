//! Integration tests: ssh.
