// Start s3rver (a Node S3 server that stores every object as a file under its data directory) on 127.0.0.1,
// with one bucket, and log every request as "METHOD URL STATUS" to a file (s3rver's own log drops the method).
// Usage: node s3rver_launch.js <s3rver package dir> <data dir> <bucket> <request log>
// Prints "READY <port>" on stdout once it listens (port chosen by the OS).
'use strict';

const fs = require('fs');
const http = require('http');

const [pkg, directory, bucket, logPath] = process.argv.slice(2);
const S3rver = require(pkg);

async function main() {
  const app = new S3rver({ directory, silent: true, vhostBuckets: false, configureBuckets: [{ name: bucket }] });
  await app.configureBuckets();
  const log = fs.createWriteStream(logPath, { flags: 'a' });
  const handle = app.callback();
  const server = http.createServer((req, res) => {
    res.on('finish', () => log.write(`${req.method} ${req.url} ${res.statusCode}\n`));
    handle(req, res);
  });
  server.keepAliveTimeout = 60000;
  server.listen(0, '127.0.0.1', () => {
    process.stdout.write(`READY ${server.address().port}\n`);
  });
}

main().catch((err) => {
  process.stderr.write(`s3rver did not start: ${err.stack || err}\n`);
  process.exit(1);
});
