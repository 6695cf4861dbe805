// `npm run build`: writes build/info.json with a devDependency (ms), which
// the buildpack removes after the build.
"use strict";
const fs = require("fs");
const path = require("path");
const ms = require("ms");

const dir = path.join(__dirname, "build");
fs.mkdirSync(dir, { recursive: true });
fs.writeFileSync(path.join(dir, "info.json"), JSON.stringify({ minute: ms(60000) }) + "\n");
console.log(`wrote build/info.json (ms says 60000 ms is ${ms(60000)})`);
