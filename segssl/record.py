"""The MLflow record of a segssl run: every tag name, defined once.

The orchestrator writes these tags (sweep runs and trial runs), ``segssl train --tracking-uri``
writes the trial ones, and the report reads them; all three import the names from here. See
DESIGN.md ("MLflow record of every run").
"""

from __future__ import annotations

__all__ = [
    "KIND_SWEEP",
    "KIND_TRIAL",
    "ROLE_PARENT",
    "ROLE_TRIAL",
    "TAG_ATTEMPTS",
    "TAG_DATA_FP",
    "TAG_END_REASON",
    "TAG_GIT_SHA",
    "TAG_GPU_CAP",
    "TAG_GPU_IDS",
    "TAG_GPU_SHARE",
    "TAG_HEARTBEAT",
    "TAG_HOST",
    "TAG_HOSTNAME",
    "TAG_KEY",
    "TAG_KIND",
    "TAG_NODE_ID",
    "TAG_NODE_IP",
    "TAG_PARENT_KEY",
    "TAG_PARENT_RUN",
    "TAG_PID",
    "TAG_RESUMED",
    "TAG_RETRYABLE",
    "TAG_ROLE",
    "TAG_SEED",
    "TAG_SPEC",
    "TAG_SPEC_FILE",
    "TAG_SPLIT_FP",
    "TAG_STAGE",
    "TAG_START",
    "TAG_SWEEP",
    "TAG_VARIANT",
]

# identity of a trial (DESIGN.md)
TAG_SWEEP = "segssl.sweep"
TAG_STAGE = "segssl.stage"
TAG_KEY = "segssl.trial_key"
TAG_PARENT_KEY = "segssl.parent_key"
TAG_SEED = "segssl.seed"
TAG_VARIANT = "segssl.variant"
TAG_GIT_SHA = "segssl.git_sha"
TAG_DATA_FP = "segssl.data_fingerprint"
TAG_SPLIT_FP = "segssl.split_fingerprint"

# which run is which: the sweep invocation's parent run and its trial children
TAG_PARENT_RUN = "mlflow.parentRunId"  # MLflow's own nesting tag
TAG_KIND = "segssl.kind"
KIND_SWEEP = "sweep"
KIND_TRIAL = "trial"
TAG_ROLE = "segssl.role"  # the same distinction in the report's words
ROLE_PARENT = "parent"
ROLE_TRIAL = "trial"

# the sweep run (the driver)
TAG_SPEC = "segssl.spec_hash"  # also an experiment tag: the study's identity
TAG_SPEC_FILE = "segssl.spec_file"
TAG_HOST = "segssl.driver_host"
TAG_PID = "segssl.driver_pid"
TAG_START = "segssl.driver_start"  # the driver process's start time (tells a reused pid apart)
TAG_HEARTBEAT = "segssl.heartbeat"

# where a trial ran (orchestrate/gpu_guard.py)
TAG_NODE_ID = "segssl.node_id"
TAG_NODE_IP = "segssl.node_ip"
TAG_HOSTNAME = "segssl.hostname"
TAG_GPU_IDS = "segssl.gpu_ids"
TAG_GPU_SHARE = "segssl.gpu_share"
TAG_GPU_CAP = "segssl.gpu_mem_cap_bytes"

# how a run went
TAG_ATTEMPTS = "segssl.attempts"
TAG_END_REASON = "segssl.end_reason"
TAG_RETRYABLE = "segssl.retryable"
TAG_RESUMED = "segssl.resumed_from_tune_checkpoint"
