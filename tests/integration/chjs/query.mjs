// Runs queries through the official ClickHouse JS client: reads {url, password, queries} as JSON on stdin,
// prints [{data} | {error}] as JSON, one entry per query (JSONCompact rows, gzip responses).
import { createClient } from "@clickhouse/client";

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const { url, password, queries } = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const client = createClient({
  url,
  username: "default",
  password: password ?? "",
  compression: { response: true, request: false },
});
const results = [];
try {
  if (!(await client.ping()).success) throw new Error("ping failed");
  for (const query of queries) {
    try {
      const rs = await client.query({ query, format: "JSONCompact" });
      const doc = await rs.json();
      results.push({ data: doc.data });
    } catch (err) {
      results.push({ error: String(err) });
    }
  }
} finally {
  await client.close();
}
process.stdout.write(JSON.stringify(results));
