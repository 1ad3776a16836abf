/**
 * The timeline chart of a reload under load: requests per 100 ms stacked by the version that served
 * them, failures in red, and the signal and the generation switch as vertical lines. Drawn with
 * Vega-Lite, rendered to SVG headless by Vega (no canvas, no browser).
 */
import { parse, View } from 'vega';
import { compile, type TopLevelSpec } from 'vega-lite';
import { type Bucket, FAILED_SERIES } from './analysis.js';

/** One panel: one reload's window of one run. Times are ms relative to the signal. */
export interface ChartPanel {
  title: string;
  buckets: Bucket[];
  /** Vertical lines: the signal, the new generation active, the old one retired. */
  marks: Array<{ t: number; label: string }>;
  from: number;
  to: number;
}

/** Pixel size of one panel's plot area. */
const WIDTH = 760;
const HEIGHT = 170;
/** Bucket width, ms (the bars span it). */
const BUCKET_MS = 100;

/** Colours for the versions in order of appearance (old, new, any later), and for failures. */
const VERSION_COLOURS = ['#4c78a8', '#f58518', '#54a24b', '#b279a2'];
const FAILED_COLOUR = '#d62728';

/** Renders the panels stacked vertically, sharing one colour legend, as an SVG document. */
export async function renderTimeline(title: string, subtitle: string, panels: ChartPanel[]): Promise<string> {
  const versions = [
    ...new Set(panels.flatMap((panel) => panel.buckets.map((bucket) => bucket.series))),
  ].filter((series) => series !== FAILED_SERIES);
  versions.sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const domain = [...versions, FAILED_SERIES];
  const range = [
    ...versions.map((_, index) => VERSION_COLOURS[index % VERSION_COLOURS.length]),
    FAILED_COLOUR,
  ];
  const spec: TopLevelSpec = {
    $schema: 'https://vega.github.io/schema/vega-lite/v6.json',
    title: { text: title, subtitle, anchor: 'start', fontSize: 15 },
    background: 'white',
    padding: 12,
    config: { view: { stroke: '#ddd' }, axis: { grid: true, gridColor: '#eee' } },
    resolve: { scale: { color: 'shared' } },
    vconcat: panels.map((panel) => ({
      title: { text: panel.title, anchor: 'start', fontSize: 12, fontWeight: 'normal' },
      width: WIDTH,
      height: HEIGHT,
      layer: [
        {
          data: {
            values: panel.buckets.map((bucket) => ({ ...bucket, tEnd: bucket.t + BUCKET_MS })),
          },
          mark: { type: 'bar', stroke: 'white', strokeWidth: 0.5 },
          encoding: {
            x: {
              field: 't',
              type: 'quantitative',
              bin: 'binned',
              scale: { domain: [panel.from, panel.to], nice: false },
              axis: { tickCount: 12 },
              title: 'ms since SIGUSR2',
            },
            x2: { field: 'tEnd' },
            y: { field: 'count', type: 'quantitative', stack: 'zero', title: 'requests / 100 ms' },
            color: {
              field: 'series',
              type: 'nominal',
              scale: { domain, range },
              legend: { title: 'served by version', orient: 'right' },
            },
            order: { field: 'series', sort: 'ascending' },
          },
        },
        {
          data: { values: panel.marks.map((mark, index) => ({ ...mark, y: 4 + index * 14 })) },
          layer: [
            {
              mark: { type: 'rule', strokeWidth: 1.5, color: '#222' },
              encoding: {
                x: { field: 't', type: 'quantitative' },
                strokeDash: {
                  field: 'label',
                  type: 'nominal',
                  scale: {
                    domain: panel.marks.map((mark) => mark.label),
                    range: [
                      [4, 3],
                      [1, 0],
                      [1, 3],
                    ],
                  },
                  legend: null,
                },
              },
            },
            {
              mark: { type: 'text', align: 'left', baseline: 'top', dx: 4, fontSize: 11, color: '#222' },
              encoding: {
                x: { field: 't', type: 'quantitative' },
                y: { field: 'y', type: 'quantitative', scale: null },
                text: { field: 'label' },
              },
            },
          ],
        },
      ],
    })),
  };
  const view = new View(parse(compile(spec).spec), { renderer: 'none' });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}
