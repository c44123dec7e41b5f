// The peer for scripts/bench: sqs-consumer v14 with a no-op handleMessageBatch.
// usage: node sqs-consumer.mjs QUEUE_URL CONSUMERS
// Counts every SQS request it makes (client middleware) and prints the count on SIGTERM.
import { Consumer } from "sqs-consumer";
import { SQSClient } from "@aws-sdk/client-sqs";

const [queueUrl, consumers] = process.argv.slice(2);
const sqs = new SQSClient({
  endpoint: process.env.AWS_ENDPOINT_URL,
  region: process.env.AWS_REGION,
  credentials: {
    accessKeyId: process.env.AWS_ACCESS_KEY_ID,
    secretAccessKey: process.env.AWS_SECRET_ACCESS_KEY,
  },
});
let requests = 0;
sqs.middlewareStack.add((next) => async (args) => {
  requests += 1;
  return next(args);
}, { step: "initialize", name: "countRequests" });

const apps = [];
for (let i = 0; i < Number(consumers); i++) {
  const app = Consumer.create({
    queueUrl,
    sqs,
    useQueueUrlAsEndpoint: false,
    batchSize: 10,
    waitTimeSeconds: 20,
    handleMessageBatch: async (messages) => messages,
  });
  app.on("error", (err) => console.error("error:", err.message));
  app.start();
  apps.push(app);
}
process.on("SIGTERM", () => {
  apps.forEach((a) => a.stop());
  console.log(requests);
  process.exit(0);
});
