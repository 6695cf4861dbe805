// The nodejs sample: answers with content made by its run-time dependency
// (escape-html) and by its build step (build/info.json).
"use strict";
const http = require("http");
const escapeHtml = require("escape-html");
const info = require("./build/info.json");

const port = Number(process.env.PORT || 5000);
const server = http.createServer((req, res) => {
  res.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
  res.end(
    "<p>hello from nodejs</p>\n" +
      `<p>escape-html says ${escapeHtml("<b>pier & npm</b>")}</p>\n` +
      `<p>built with ms: ${info.minute}</p>\n` +
      `<p>NODE_ENV=${escapeHtml(process.env.NODE_ENV || "")}</p>\n`
  );
});
server.listen(port, "0.0.0.0", () => console.log(`listening on 0.0.0.0:${port}`));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
