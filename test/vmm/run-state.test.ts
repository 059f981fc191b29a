// The run state machine: every transition of QEMU's table allowed and every other one refused (checked
// against the table as written in QEMU's system/runstate.c, copied here independently); change handlers
// in registration order on start and in reverse on stop; failing handlers; serialized transitions;
// STOP/RESUME events; re-entrant transitions refused, with the async context that finds them kept only
// while handlers run.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { RUN_STATES, RunState, RunStateError, type RunStateEvent, type RunStateName } from '../../src/vmm/run-state.ts';

// QEMU's runstate_transitions_def, pair by pair, in its order.
const QEMU_PAIRS = `
prelaunch inmigrate
debug running | debug finish-migrate | debug prelaunch
inmigrate internal-error | inmigrate io-error | inmigrate paused | inmigrate running | inmigrate shutdown
inmigrate suspended | inmigrate watchdog | inmigrate guest-panicked | inmigrate finish-migrate
inmigrate prelaunch | inmigrate postmigrate | inmigrate colo
internal-error paused | internal-error finish-migrate | internal-error prelaunch
io-error running | io-error finish-migrate | io-error prelaunch
paused running | paused finish-migrate | paused postmigrate | paused prelaunch | paused colo
postmigrate running | postmigrate finish-migrate | postmigrate prelaunch
prelaunch running | prelaunch finish-migrate | prelaunch inmigrate
finish-migrate running | finish-migrate paused | finish-migrate postmigrate | finish-migrate prelaunch
finish-migrate colo | finish-migrate internal-error | finish-migrate io-error | finish-migrate shutdown
finish-migrate suspended | finish-migrate watchdog | finish-migrate guest-panicked
restore-vm running | restore-vm prelaunch
colo running | colo prelaunch | colo shutdown
running debug | running internal-error | running io-error | running paused | running finish-migrate
running restore-vm | running save-vm | running shutdown | running watchdog | running guest-panicked
running colo
save-vm running
shutdown paused | shutdown finish-migrate | shutdown prelaunch | shutdown colo
debug suspended | running suspended | suspended running | suspended finish-migrate | suspended prelaunch
suspended colo
watchdog running | watchdog finish-migrate | watchdog prelaunch | watchdog colo
guest-panicked running | guest-panicked finish-migrate | guest-panicked prelaunch`;

const allowedPairs = new Set(
  QEMU_PAIRS.split(/[|\n]/)
    .map((s) => s.trim())
    .filter(Boolean),
);

/** A RunState placed in `state` (the constructor takes any initial state). */
const at = (state: RunStateName) => new RunState(state);

describe('RunState', () => {
  test('the table is exactly QEMU’s: every allowed transition works, every other is refused', async () => {
    for (const pair of allowedPairs) {
      const [from, to] = pair.split(' ') as [RunStateName, RunStateName];
      assert.ok(RUN_STATES.includes(from) && RUN_STATES.includes(to), pair);
    }
    let allowed = 0;
    let refused = 0;
    for (const from of RUN_STATES) {
      for (const to of RUN_STATES) {
        const rs = at(from);
        const want = from === to || allowedPairs.has(`${from} ${to}`);
        assert.equal(RunState.allowed(from, to), want, `${from} -> ${to}`);
        if (want) {
          assert.deepEqual(await rs.transition(to, 'test'), []);
          assert.equal(rs.state, to);
          allowed++;
        } else {
          await assert.rejects(rs.transition(to, 'test'), (e: RunStateError) => {
            assert.ok(e instanceof RunStateError);
            assert.equal(e.from, from);
            assert.equal(e.to, to);
            assert.equal(e.message, `run state ${from} -> ${to} is not allowed`);
            return true;
          });
          assert.equal(rs.state, from, 'a refused transition changes nothing');
          refused++;
        }
      }
    }
    assert.equal(allowed, allowedPairs.size + RUN_STATES.length);
    assert.equal(allowed + refused, RUN_STATES.length ** 2);
  });

  test('running means the state running; needsReset for internal-error and shutdown', () => {
    for (const s of RUN_STATES) {
      assert.equal(at(s).running, s === 'running', s);
      assert.equal(at(s).needsReset, s === 'internal-error' || s === 'shutdown', s);
    }
    assert.equal(new RunState().state, 'prelaunch');
  });

  test('handlers: registration order on start, reverse on stop, none when running-ness does not change', async () => {
    const rs = new RunState();
    const calls: string[] = [];
    for (const name of ['dev', 'vcpus', 'qmp'])
      rs.addChangeHandler(async (running, reason, state) => {
        await new Promise((r) => setTimeout(r, 1));
        calls.push(`${name}:${running ? 'start' : 'stop'}:${reason}:${state}`);
      });
    await rs.transition('running', 'boot');
    assert.deepEqual(calls.splice(0), ['dev:start:boot:running', 'vcpus:start:boot:running', 'qmp:start:boot:running']);
    await rs.transition('paused', 'stop');
    assert.deepEqual(calls.splice(0), ['qmp:stop:stop:paused', 'vcpus:stop:stop:paused', 'dev:stop:stop:paused']);
    await rs.transition('finish-migrate', 'migrate'); // stopped -> stopped
    await rs.transition('finish-migrate', 'again'); // same state
    assert.deepEqual(calls, []);
    await rs.transition('running', 'migration failed');
    assert.equal(calls.length, 3);
  });

  test('a failing handler: the others still run, the state is set, the errors come back in call order', async () => {
    const rs = new RunState('paused');
    const ran: string[] = [];
    rs.addChangeHandler(() => {
      ran.push('a');
      throw new Error('device a would not start');
    });
    const remove = rs.addChangeHandler(() => {
      ran.push('b');
    });
    rs.addChangeHandler(async () => {
      ran.push('c');
      throw 'a string, not an Error';
    });
    const errors = await rs.transition('running', 'cont');
    assert.equal(rs.state, 'running');
    assert.deepEqual(ran, ['a', 'b', 'c']);
    assert.deepEqual(
      errors.map((e) => e.message),
      ['device a would not start', 'a string, not an Error'],
    );
    remove();
    ran.length = 0;
    const stopErrors = await rs.transition('paused', 'stop');
    assert.deepEqual(ran, ['c', 'a'], 'reverse order, without the removed handler');
    assert.equal(stopErrors.length, 2);
    assert.equal(rs.state, 'paused');
  });

  test('STOP and RESUME events: RESUME before the start handlers, STOP after the stop handlers', async () => {
    const rs = new RunState();
    const log: string[] = [];
    rs.addChangeHandler((running) => {
      log.push(running ? 'handler:start' : 'handler:stop');
    });
    const off = rs.onEvent((e: RunStateEvent) => log.push(`${e.event}:${e.state}:${e.reason}`));
    rs.onEvent(() => {
      throw new Error('a broken listener changes nothing');
    });
    await rs.transition('running', 'boot');
    await rs.transition('finish-migrate', 'migrate');
    await rs.transition('postmigrate', 'done'); // no event: stopped -> stopped
    assert.deepEqual(log, ['RESUME:running:boot', 'handler:start', 'handler:stop', 'STOP:finish-migrate:migrate']);
    off();
    await rs.transition('running', 'cont');
    assert.equal(log.length, 5);
  });

  test('transitions are serialized; vmStop does nothing to a stopped VM', async () => {
    const rs = new RunState('running');
    const log: string[] = [];
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    rs.addChangeHandler(async (running) => {
      log.push(`enter ${running}`);
      if (!running) await gate;
      log.push(`leave ${running}`);
    });
    const stop = rs.transition('paused', 'stop');
    const cont = rs.transition('running', 'cont'); // waits for stop's handlers
    const again = rs.vmStop('stop again'); // checked when its turn comes: running again by then
    await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(log, ['enter false']);
    release();
    await Promise.all([stop, cont, again]);
    assert.deepEqual(log, ['enter false', 'leave false', 'enter true', 'leave true', 'enter false', 'leave false']);
    assert.equal(rs.state, 'paused');
    assert.deepEqual(await rs.vmStop('stopped already'), []);
    assert.equal(rs.state, 'paused');
    // A refused transition does not jam the queue.
    await assert.rejects(rs.transition('save-vm', 'x'), RunStateError);
    assert.deepEqual(await rs.transition('running', 'cont'), []);
    assert.equal(log.at(-1), 'leave true');
    // vmStop into another stopped state (QEMU's vm_stop(RUN_STATE_FINISH_MIGRATE)).
    await rs.vmStop('migration', 'finish-migrate');
    assert.equal(rs.state, 'finish-migrate');
  });

  test('a handler asking for a transition is refused (it would wait for itself), later ones are not', async () => {
    const rs = new RunState('paused');
    let inner: Promise<Error[]> | undefined;
    let later: Promise<Error[]> | undefined;
    rs.addChangeHandler((running) => {
      if (running) {
        inner = rs.transition('paused', 'from inside');
        // Work a handler starts and that outlives it may transition once the handlers are done.
        setTimeout(() => {
          later = rs.transition('paused', 'later');
        }, 5);
      }
    });
    assert.deepEqual(await rs.transition('running', 'cont'), []);
    await assert.rejects(inner!, /from inside a VM state change handler/);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(await later!, []);
    assert.equal(rs.state, 'paused');
  });

  test('a handler is still refused while another VM finishes its own transition meanwhile', async () => {
    const a = new RunState('paused');
    const b = new RunState('paused');
    let release!: () => void;
    const held = new Promise<void>((r) => {
      release = r;
    });
    let inner: Promise<Error[]> | undefined;
    a.addChangeHandler(async (running) => {
      if (!running) return;
      await held;
      inner = a.transition('paused', 'from inside');
    });
    b.addChangeHandler(() => {});
    const started = a.transition('running', 'cont');
    // b's handlers run and end while a's are still waiting.
    assert.deepEqual(await b.transition('running', 'cont'), []);
    release();
    assert.deepEqual(await started, []);
    await assert.rejects(inner!, /from inside a VM state change handler/);
  });

  test('once no handler runs, promises carry no async context (Node 20 hooks every promise while one is kept)', () => {
    // With promise hooks on, each await resumes in a new async resource; with them off, in the same one.
    // Run apart: node:test keeps hooks of its own on in this process.
    const script = `
      import { executionAsyncId } from 'node:async_hooks';
      const { RunState } = await import(${JSON.stringify(new URL('../../src/vmm/run-state.ts', import.meta.url).href)});
      const resumedIn = async () => { await null; const first = executionAsyncId(); await null; return [first, executionAsyncId()]; };
      const rs = new RunState('paused');
      let during;
      rs.addChangeHandler(async () => { during = await resumedIn(); });
      await rs.transition('running', 'cont');
      await rs.vmStop('stop');
      console.log(JSON.stringify({ during, after: await resumedIn() }));`;
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 60_000,
    });
    const { during, after } = JSON.parse(out) as { during: number[]; after: number[] };
    // The probe does see hooks: while a handler runs they are on (on Node 20; later Node versions keep
    // the context without them).
    if (process.versions.node.startsWith('20.')) assert.notEqual(during[0], during[1]);
    assert.equal(after[0], after[1]);
  });
});
