#!/bin/sh
# Creates the queue and DLQ of config/local.toml when LocalStack is ready.
set -e
awslocal sqs create-queue --queue-name conveyor-local-dlq --attributes MessageRetentionPeriod=1209600
awslocal sqs create-queue --queue-name conveyor-local --attributes \
  '{"RedrivePolicy":"{\"deadLetterTargetArn\":\"arn:aws:sqs:us-east-1:000000000000:conveyor-local-dlq\",\"maxReceiveCount\":\"3\"}"}'
