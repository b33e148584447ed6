# A bounded soak run, not part of `make test`: concurrent clients push layers of random sizes with
# retries, cuts and duplicate parts, on the embedded backend and on the local S3 + DynamoDB
# servers with faults injected, then every layer is read back and hashed. ECR_SOAK_SECS (60) and
# ECR_SOAK_CLIENTS (8) size it; see scripts/soak.sh.
.PHONY: soak
soak:
	CARGO=$(CARGO) scripts/soak.sh
