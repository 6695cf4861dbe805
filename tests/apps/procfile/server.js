// The procfile sample: a web server with no dependencies and nothing to
// build, started by its Procfile.
"use strict";
const http = require("http");

const port = Number(process.env.PORT || 5000);
const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/plain; charset=utf-8" });
  res.end(`hello from procfile (${process.env.DYNO || "no dyno"})\n`);
});
server.listen(port, "0.0.0.0", () => console.log(`listening on 0.0.0.0:${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
