#!/usr/bin/env bash
# Creates bucket "strata" in a MinIO that is already running, for those without
# Docker Compose (compose.yaml does the same with its createbucket service).
# Uses the MinIO client `mc` when it is installed, otherwise python3 with boto3
# (`pip install boto3`). Idempotent: an existing bucket is left as it is.
#   MINIO_ENDPOINT  default http://127.0.0.1:9000
#   MINIO_USER / MINIO_PASSWORD  default strata / strata-secret (as in compose.yaml)
#   BUCKET  default strata
set -euo pipefail

MINIO_ENDPOINT="${MINIO_ENDPOINT:-http://127.0.0.1:9000}"
MINIO_USER="${MINIO_USER:-strata}"
MINIO_PASSWORD="${MINIO_PASSWORD:-strata-secret}"
BUCKET="${BUCKET:-strata}"

if command -v mc >/dev/null 2>&1; then
  # MC_HOST_<alias> configures an alias for this command only.
  scheme="${MINIO_ENDPOINT%%://*}"
  hostport="${MINIO_ENDPOINT#*://}"
  MC_HOST_strata="$scheme://$MINIO_USER:$MINIO_PASSWORD@$hostport" \
    mc mb --ignore-existing "strata/$BUCKET"
else
  MINIO_ENDPOINT="$MINIO_ENDPOINT" MINIO_USER="$MINIO_USER" MINIO_PASSWORD="$MINIO_PASSWORD" \
  BUCKET="$BUCKET" python3 - <<'PY'
import os

import boto3
from botocore.exceptions import ClientError

s3 = boto3.client(
    "s3",
    endpoint_url=os.environ["MINIO_ENDPOINT"],
    aws_access_key_id=os.environ["MINIO_USER"],
    aws_secret_access_key=os.environ["MINIO_PASSWORD"],
    region_name="us-east-1",
)
bucket = os.environ["BUCKET"]
try:
    s3.create_bucket(Bucket=bucket)
    print(f"Bucket created successfully `{bucket}`.")
except ClientError as e:
    if e.response["Error"]["Code"] not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
        raise
    print(f"Bucket `{bucket}` already exists.")
PY
fi
