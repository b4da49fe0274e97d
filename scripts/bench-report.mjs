// The figures of `npm run bench` (scripts/bench.mjs): per operation the peer's and fleece's times over the rounds,
// medians and spreads, ratios, and the aims of project issue 11; as a plain-text table and as Markdown. Pure.
import { MiB, median } from './bench-host.mjs';

const AIMS = {
  fullSpeedUp: 2, // full (plain and compressed) ≥ 2× the peer
  floorShare: 0.8, // full ≥ 80 % of nbdcopy + sync
  incrementalSpeedUp: 2,
  fixedCost: 0.3, // seconds
  restoreSpeedUp: 1.5,
  peakRss: 256 * MiB,
  startup: 0.15, // seconds
};

const range = (values) => {
  const v = values.filter(Number.isFinite);
  return v.length ? [Math.min(...v), Math.max(...v)] : [NaN, NaN];
};
const secs = (s) => (s < 10 ? s.toFixed(2) : s.toFixed(1));

/** "5.77 s (5.61–6.02)" over the rounds; "5.77 s" for one; "" for none. */
export function timeCell(values) {
  const v = values.filter(Number.isFinite);
  if (v.length === 0) return '';
  const [lo, hi] = range(v);
  return v.length === 1 ? `${secs(v[0])} s` : `${secs(median(v))} s (${secs(lo)}–${secs(hi)})`;
}

function ratioCell(ratios, format, bare) {
  const v = ratios.filter(Number.isFinite);
  if (v.length === 0) return '';
  const [lo, hi] = range(v);
  return v.length === 1 ? format(v[0]) : `${format(median(v))} (${bare(lo)}–${bare(hi)})`;
}
const times = (x) => `${x.toFixed(1)}×`;
const percent = (x) => `${(100 * x).toFixed(0)} %`;
const timesBare = (x) => x.toFixed(1);
const percentBare = (x) => (100 * x).toFixed(0);
const mib = (b) => `${(b / MiB).toFixed(0)} MiB`;

/**
 * Table rows from `ops` (per operation: label, data bytes, per-round peer and fleece results, the floor's per-round
 * seconds when the operation compares with it). Ratios are per round (the peer's and fleece's run of the same round),
 * then the median and range of those.
 */
export function tableRows(ops) {
  return ops.map((op) => {
    const peer = op.peer?.map((r) => r?.seconds) ?? [];
    const fleece = op.fleece.map((r) => r?.seconds);
    const speedUps = op.fleece.map((f, i) => (op.peer?.[i] && f ? op.peer[i].seconds / f.seconds : NaN));
    const floorShares = op.floor ? op.fleece.map((f, i) => (f && op.floor[i] ? op.floor[i] / f.seconds : NaN)) : [];
    const fleeceRss = Math.max(0, ...op.fleece.map((r) => r?.peakRss ?? 0));
    const peerRss = Math.max(0, ...(op.peer ?? []).map((r) => r?.peakRss ?? 0));
    return {
      key: op.key,
      label: op.label,
      cells: [
        op.label,
        op.dataBytes !== undefined ? mib(op.dataBytes) : '',
        op.peer ? timeCell(peer) || 'not run' : '–',
        timeCell(fleece),
        ratioCell(speedUps, times, timesBare),
        ratioCell(floorShares, percent, percentBare),
        fleeceRss ? mib(fleeceRss) : '',
        peerRss ? mib(peerRss) : '',
      ],
      speedUp: median(speedUps),
      floorShare: median(floorShares),
      fleeceRss,
    };
  });
}

export const HEADERS = ['operation', 'data', 'virtnbdbackup', 'fleece', 'speed-up', 'fleece vs nbdcopy+sync', 'fleece peak RSS', 'peer peak RSS'];

/** The aims of issue 11 against the figures: [{ aim, value, met }] (met undefined when not measured). */
export function aims({ rows, fixedCost, startup, fleeceRss }) {
  const row = (key) => rows.find((r) => r.key === key);
  const check = (aim, value, met) => ({ aim, value, met });
  const out = [];
  const ratioAim = (key, name, need) => {
    const r = row(key);
    const v = r?.speedUp;
    out.push(check(`${name} ≥ ${need}× the peer`, Number.isFinite(v) ? times(v) : 'not measured', Number.isFinite(v) ? v >= need : undefined));
  };
  ratioAim('full-plain', 'full, plain', AIMS.fullSpeedUp);
  ratioAim('full-compressed', 'full, compressed', AIMS.fullSpeedUp);
  for (const [key, name] of [['full-plain', 'full, plain'], ['full-compressed', 'full, compressed']]) {
    const v = row(key)?.floorShare;
    out.push(check(`${name} ≥ ${percent(AIMS.floorShare)} of nbdcopy + sync`, Number.isFinite(v) ? percent(v) : 'not measured', Number.isFinite(v) ? v >= AIMS.floorShare : undefined));
  }
  ratioAim('incremental', 'incremental (1 % written)', AIMS.incrementalSpeedUp);
  out.push(check(`incremental fixed cost ≤ ${AIMS.fixedCost} s`, Number.isFinite(fixedCost) ? `${fixedCost.toFixed(2)} s` : 'not measured', Number.isFinite(fixedCost) ? fixedCost <= AIMS.fixedCost : undefined));
  ratioAim('restore-qcow2', 'restore → qcow2', AIMS.restoreSpeedUp);
  ratioAim('restore-raw', 'restore → raw', AIMS.restoreSpeedUp);
  out.push(check(`peak RSS ≤ ${mib(AIMS.peakRss)}`, mib(fleeceRss), fleeceRss > 0 ? fleeceRss <= AIMS.peakRss : undefined));
  for (const [name, t] of Object.entries(startup ?? {})) {
    out.push(check(`\`fleece ${name}\` ≤ ${AIMS.startup * 1000} ms`, `${(t.median * 1000).toFixed(0)} ms`, t.median <= AIMS.startup));
  }
  return out;
}

export const metText = (met) => (met === undefined ? 'not measured' : met ? 'met' : 'NOT met');

/** A Markdown table. */
export function markdownTable(headers, rows) {
  const line = (cells) => `| ${cells.join(' | ')} |`;
  return [line(headers), line(headers.map((_, i) => (i === 0 ? '---' : '---:'))), ...rows.map(line)].join('\n');
}
