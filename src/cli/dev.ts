import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { initCluster, joinCluster } from '../server/bootstrap.ts';
import { CofferNode } from '../server/node.ts';
import { createLogger } from '../util/logger.ts';

interface DevLayout {
  readonly managers: ReadonlyArray<{ readonly data: string; readonly listen: string }>;
  readonly adminDir: string;
}

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
  const port = (server.address() as { port: number }).port;
  await new Promise((done) => server.close(done));
  return port;
}

async function waitFor(what: string, probe: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((done) => setTimeout(done, 50));
  }
}

/**
 * `coffer dev` (`npm start`): a local cluster on 127.0.0.1 in this process, with its PKI and data
 * under DIR. Made on the first run, reused after; `DIR/client.env` holds the COFFER_* variables.
 */
export function devCommand(): Command {
  return new Command('dev')
    .description('run a local cluster of managers on 127.0.0.1 (its data under --dir), until Ctrl-C')
    .option('--dir <dir>', 'where the cluster lives', '.coffer/dev')
    .option(
      '--managers <n>',
      'managers (on the first run)',
      (v) => {
        const n = Number(v);
        if (![1, 3, 5, 7].includes(n)) throw new InvalidArgumentError('1, 3, 5 or 7 managers');
        return n;
      },
      3,
    )
    .action(async (flags: { dir: string; managers: number }) => {
      const dir = resolve(flags.dir);
      const layoutFile = join(dir, 'dev.json');
      const logger = createLogger({ component: 'dev', level: process.env['COFFER_LOG_LEVEL'] ?? 'warn' });
      const nodes: CofferNode[] = [];
      const stopAll = async (): Promise<void> => {
        for (const node of nodes.reverse()) await node.stop().catch(() => undefined);
      };
      process.once('SIGINT', () => void stopAll().then(() => process.exit(0)));
      process.once('SIGTERM', () => void stopAll().then(() => process.exit(0)));
      let layout: DevLayout;
      if (existsSync(layoutFile)) {
        layout = JSON.parse(readFileSync(layoutFile, 'utf8')) as DevLayout;
        for (const m of layout.managers) nodes.push(await CofferNode.start({ dataDir: m.data, logger }));
      } else {
        mkdirSync(dir, { recursive: true, mode: 0o700 });
        const managers = [];
        for (let k = 0; k < flags.managers; k++)
          managers.push({ data: join(dir, `m${k + 1}`), listen: `127.0.0.1:${await freePort()}` });
        const init = await initCluster({
          dataDir: managers[0]!.data,
          listen: managers[0]!.listen,
          adminDir: join(dir, 'admin'),
          recoveryKeyFile: join(dir, 'recovery-key'),
        });
        nodes.push(await CofferNode.start({ dataDir: managers[0]!.data, logger }));
        await waitFor(
          'the first manager to lead',
          () => nodes[0]!.state.cluster.joinTokenHash !== null && nodes[0]!.manager.raftStatus()?.role === 'leader',
        );
        for (const m of managers.slice(1)) {
          await joinCluster({ dataDir: m.data, listen: m.listen, join: managers[0]!.listen, token: init.joinToken });
          nodes.push(await CofferNode.start({ dataDir: m.data, logger }));
          await waitFor(
            `${m.listen} to become a voter`,
            () => nodes[0]!.manager.raftStatus()?.confState.voters.length === nodes.length,
          );
        }
        layout = { managers, adminDir: init.adminDir };
        writeFileSync(layoutFile, `${JSON.stringify(layout, null, 2)}\n`);
        writeFileSync(join(dir, 'join-token'), `${init.joinToken}\n`, { mode: 0o600 });
      }
      const env = join(dir, 'client.env');
      writeFileSync(
        env,
        [
          `COFFER_ADDR=${layout.managers.map((m) => m.listen).join(',')}`,
          `COFFER_CA=${join(layout.adminDir, 'ca.crt')}`,
          `COFFER_CERT=${join(layout.adminDir, 'admin.crt')}`,
          `COFFER_KEY=${join(layout.adminDir, 'admin.key')}`,
          '',
        ].join('\n'),
      );
      process.stdout.write(
        [
          `coffer: ${layout.managers.length} managers running on ${layout.managers.map((m) => m.listen).join(', ')} (data in ${dir})`,
          'in another shell:',
          `  set -a; . ${env}; set +a`,
          '  echo -n hunter2 | npx coffer secret put app/db/password',
          '  npx coffer secret get app/db/password',
          // biome-ignore lint/suspicious/noTemplateCurlyInString: a shell expansion, printed for the user to run
          '  npx coffer run --env DB_PASSWORD=app/db/password -- sh -c \'echo "got ${#DB_PASSWORD} characters"\'',
          `  npx coffer snapshot save backup.coffer     # restore: coffer snapshot restore --recovery-key-file ${join(dir, 'recovery-key')} ...`,
          'Ctrl-C stops the cluster; run again to reuse it.',
          '',
        ].join('\n'),
      );
    });
}
