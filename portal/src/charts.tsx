import { useEffect, useState } from 'preact/hooks';
import { api, Attempt, Page, qs } from './api';

const PAGES = 4;
const BUCKETS = 24;
const OUTCOMES = ['delivered', 'failed', 'dead'] as const;

type Bucket = { start: number; counts: Record<string, number>; p50: number | null; p95: number | null };

function quantile(sorted: number[], q: number): number | null {
  if (!sorted.length) return null;
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

/// Buckets attempts by time: outcome counts and latency quantiles.
export function bucketize(attempts: Attempt[], n = BUCKETS): Bucket[] {
  if (!attempts.length) return [];
  const times = attempts.map((a) => new Date(a.created_at).getTime());
  const lo = Math.min(...times);
  const hi = Math.max(...times) + 1;
  const width = Math.max(1000, Math.ceil((hi - lo) / n));
  const count = Math.ceil((hi - lo) / width);
  const buckets = Array.from({ length: count }, (_, i) => ({ start: lo + i * width, counts: { delivered: 0, failed: 0, dead: 0 } as Record<string, number>, lat: [] as number[] }));
  attempts.forEach((a, i) => {
    const b = buckets[Math.min(count - 1, Math.floor((times[i] - lo) / width))];
    b.counts[a.outcome] = (b.counts[a.outcome] ?? 0) + 1;
    if (a.latency_ms != null) b.lat.push(a.latency_ms);
  });
  return buckets.map((b) => {
    const s = b.lat.sort((x, y) => x - y);
    return { start: b.start, counts: b.counts, p50: quantile(s, 0.5), p95: quantile(s, 0.95) };
  });
}

const W = 640;
const H = 200;
const PAD = 32;

function time(t: number, span = 3600_000) {
  const d = new Date(t);
  if (span >= 86400_000) return d.toLocaleString([], { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
  return d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', ...(span < 3600_000 ? { second: '2-digit' } : {}) });
}

function span(buckets: Bucket[]): number {
  return buckets[buckets.length - 1].start - buckets[0].start;
}

function OutcomeChart({ buckets }: { buckets: Bucket[] }) {
  const max = Math.max(1, ...buckets.map((b) => OUTCOMES.reduce((s, o) => s + b.counts[o], 0)));
  const bw = (W - PAD * 2) / buckets.length;
  return (
    <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-labelledby="outcomes-title outcomes-desc" data-testid="outcome-chart">
      <title id="outcomes-title">Delivery outcomes over time</title>
      <desc id="outcomes-desc">Stacked bars of delivered, failed and dead attempts per time bucket; the table below has the numbers.</desc>
      <line x1={PAD} y1={H - PAD} x2={W - PAD} y2={H - PAD} class="axis" />
      <text x={4} y={PAD} class="tick">{max}</text>
      <text x={4} y={H - PAD} class="tick">0</text>
      {buckets.map((b, i) => {
        let y = H - PAD;
        return (
          <g key={b.start}>
            {OUTCOMES.map((o) => {
              const h = ((H - PAD * 2) * b.counts[o]) / max;
              y -= h;
              return h > 0 ? (
                <rect key={o} x={PAD + i * bw + 1} y={y} width={Math.max(1, bw - 2)} height={h} class={`bar ${o}`}>
                  <title>{`${time(b.start)}: ${b.counts[o]} ${o}`}</title>
                </rect>
              ) : null;
            })}
          </g>
        );
      })}
      <text x={PAD} y={H - 8} class="tick">{time(buckets[0].start, span(buckets))}</text>
      <text x={W - PAD} y={H - 8} class="tick" text-anchor="end">{time(buckets[buckets.length - 1].start, span(buckets))}</text>
    </svg>
  );
}

function LatencyChart({ buckets }: { buckets: Bucket[] }) {
  const max = Math.max(1, ...buckets.map((b) => b.p95 ?? 0));
  const x = (i: number) => PAD + ((W - PAD * 2) * (i + 0.5)) / buckets.length;
  const y = (v: number) => H - PAD - ((H - PAD * 2) * v) / max;
  const line = (k: 'p50' | 'p95') =>
    buckets
      .map((b, i) => (b[k] == null ? null : `${x(i)},${y(b[k]!)}`))
      .filter(Boolean)
      .join(' ');
  return (
    <svg viewBox={`0 0 ${W} ${H}`} role="img" aria-labelledby="latency-title latency-desc" data-testid="latency-chart">
      <title id="latency-title">Delivery latency over time</title>
      <desc id="latency-desc">Median (p50) and p95 latency in milliseconds per time bucket; the table below has the numbers.</desc>
      <line x1={PAD} y1={H - PAD} x2={W - PAD} y2={H - PAD} class="axis" />
      <text x={4} y={PAD} class="tick">{max} ms</text>
      <text x={4} y={H - PAD} class="tick">0</text>
      <polyline points={line('p95')} class="lat p95" />
      <polyline points={line('p50')} class="lat p50" />
      {buckets.map((b, i) => (b.p50 == null ? null : <circle key={b.start} cx={x(i)} cy={y(b.p50)} r={3} class="dot" />))}
      <text x={PAD} y={H - 8} class="tick">{time(buckets[0].start, span(buckets))}</text>
      <text x={W - PAD} y={H - 8} class="tick" text-anchor="end">{time(buckets[buckets.length - 1].start, span(buckets))}</text>
    </svg>
  );
}

export function Charts() {
  const [subscription, setSubscription] = useState('');
  const [applied, setApplied] = useState('');
  const [attempts, setAttempts] = useState<Attempt[] | null>(null);
  const [truncated, setTruncated] = useState(false);
  const [error, setError] = useState<string | null>(null);

  async function load() {
    setError(null);
    try {
      const all: Attempt[] = [];
      let cursor: string | null = null;
      for (let i = 0; i < PAGES; i++) {
        const p: Page<Attempt> = await api('GET', `/integrations/webhooks${qs({ subscription_id: applied, limit: 500, cursor })}`);
        all.push(...p.data);
        cursor = p.next_cursor;
        if (!cursor) break;
      }
      setTruncated(!!cursor);
      setAttempts(all);
    } catch (err) {
      setError((err as Error).message);
    }
  }
  useEffect(() => {
    load();
  }, [applied]);

  const buckets = attempts ? bucketize(attempts) : [];
  return (
    <section aria-labelledby="charts-title">
      <h2 id="charts-title">Delivery charts</h2>
      <form
        class="row"
        onSubmit={(e) => {
          e.preventDefault();
          setApplied(subscription.trim());
        }}
      >
        <label for="chart-sub">Subscription id</label>
        <input id="chart-sub" placeholder="all subscriptions" value={subscription} onInput={(e) => setSubscription((e.target as HTMLInputElement).value)} />
        <button type="submit">Show</button>
        <button type="button" onClick={load}>
          Refresh
        </button>
      </form>
      {error && <p class="error" role="alert">{error}</p>}
      {attempts && (
        <p data-testid="chart-summary">
          {attempts.length} attempts{truncated ? ` (the latest ${attempts.length}; older ones are not charted)` : ''}:{' '}
          {OUTCOMES.map((o) => `${attempts.filter((a) => a.outcome === o).length} ${o}`).join(', ')}.
        </p>
      )}
      {buckets.length > 0 && (
        <>
          <div class="legend" aria-hidden="true">
            <span class="key delivered" /> delivered <span class="key failed" /> failed <span class="key dead" /> dead <span class="key p50" /> p50 <span class="key p95" /> p95
          </div>
          <div class="charts">
            <OutcomeChart buckets={buckets} />
            <LatencyChart buckets={buckets} />
          </div>
          <details>
            <summary>Numbers</summary>
            <div class="scroll">
              <table>
                <thead>
                  <tr>
                    <th scope="col">From</th>
                    {OUTCOMES.map((o) => (
                      <th scope="col" key={o}>{o}</th>
                    ))}
                    <th scope="col">p50 ms</th>
                    <th scope="col">p95 ms</th>
                  </tr>
                </thead>
                <tbody>
                  {buckets.map((b) => (
                    <tr key={b.start}>
                      <td>{new Date(b.start).toLocaleString()}</td>
                      {OUTCOMES.map((o) => (
                        <td key={o}>{b.counts[o]}</td>
                      ))}
                      <td>{b.p50 ?? '—'}</td>
                      <td>{b.p95 ?? '—'}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </details>
        </>
      )}
    </section>
  );
}
