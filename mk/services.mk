# Local S3 (SeaweedFS) and DynamoDB (dynoxide) servers for the AWS backend; see
# scripts/services.sh. Included by the top-level Makefile, which defines TOOLS_DIR and CARGO.

SERVICES := scripts/services.sh

.PHONY: services-install services-up services-down services-status aws-env run-aws test-aws \
	test-aws-contract test-aws-backend

services-install:
	$(SERVICES) install

services-up:
	$(SERVICES) up

services-down:
	$(SERVICES) down

services-status:
	$(SERVICES) status

# `make -s aws-env` prints only the KEY=value lines.
aws-env:
	@$(SERVICES) env

# The API on 127.0.0.1:8080 with the AWS backend against the local servers.
run-aws: services-up
	env $$($(SERVICES) env) $(CARGO) run --release -- serve

# tests/aws: the suites that need the servers, on the AWS backend in-process.
test-aws: services-up
	env $$($(SERVICES) env) $(CARGO) test --test aws

# The storage contract on the AWS adapters (tests/aws/contract.rs).
test-aws-contract: services-up
	env $$($(SERVICES) env) $(CARGO) test --test aws contract::

# The service suite (tests/service/) in-process on the AWS backend, checked against S3's own
# listings, and the AWS-only service checks (tests/aws/backend.rs).
test-aws-backend: services-up
	env $$($(SERVICES) env) $(CARGO) test --test aws backend::
