// Runs one libvfio-user sample server (`SERVER -v SOCKET`) the way our process harness starts device
// servers: it prints "serving" once the socket listens (the sample says nothing itself, and its path
// exists before it listens: unix-listening.mjs), passes the sample's output through, and stops it on
// SIGTERM.
// Usage: node peer-server.mjs SERVER SOCKET
import { spawn } from 'node:child_process';
import { listening } from './unix-listening.mjs';

const [server, socket] = process.argv.slice(2);
if (!server || !socket) {
  console.error('usage: peer-server.mjs SERVER SOCKET');
  process.exit(2);
}
const child = spawn(server, ['-v', socket], { stdio: ['ignore', 'pipe', 'inherit'] });
// The sample prints "doing dma io" on stdout when its timer fires; tests watch for it.
child.stdout.on('data', (d) => process.stdout.write(d));
child.on('error', (err) => {
  console.error(`peer-server: ${err.message}`);
  process.exit(1);
});
child.on('exit', (code, signal) => process.exit(code ?? (signal ? 128 : 1)));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => child.kill(sig));
const poll = setInterval(() => {
  if (listening(socket)) {
    clearInterval(poll);
    process.stdout.write('serving\n');
  }
}, 20);
