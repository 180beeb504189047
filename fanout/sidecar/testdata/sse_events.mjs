// Reads rekey-agent's event stream (GET /v1/events) with Node's fetch and
// prints each event as one line: <event name> <data>. Usage:
//   node sse_events.mjs URL   (bearer token in REKEY_AGENT_TOKEN)
const res = await fetch(process.argv[2], {
  headers: { Authorization: `Bearer ${process.env.REKEY_AGENT_TOKEN}` },
});
if (!res.ok) {
  console.log(`ERROR ${res.status}`);
  process.exit(0);
}
const decoder = new TextDecoder();
let buf = "";
for await (const chunk of res.body) {
  buf += decoder.decode(chunk, { stream: true });
  let i;
  while ((i = buf.indexOf("\n\n")) >= 0) {
    const block = buf.slice(0, i);
    buf = buf.slice(i + 2);
    let event = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).trim());
    }
    if (data.length) console.log(`${event} ${data.join("\n")}`);
  }
}
