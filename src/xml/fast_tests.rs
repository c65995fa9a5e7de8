//! The fast framer against the rxml framer: same frames, same verdict.
//! (The rxml framer's own unit tests also run against this framer, see
//! the bottom of `fast.rs`.)

use crate::xml::differential::differ;
use crate::xml::framer::FramerLimits;

const HEADER: &str = "<?xml version='1.0'?><stream:stream xmlns='jabber:component:accept' \
    xmlns:stream='http://etherx.jabber.org/streams' from='proxy.example.test' id='s1d' xml:lang='en'>";

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    "<iq type='get' id='1' to='proxy.example.test' from='user@example.test/abc'><query xmlns='jabber:iq:version'/></iq>",
    r#"<iq type="set" id="q&quot;1" to="proxy.example.test" from="o&apos;brien@example.test/x"><q xmlns='urn:x' a='/>' b="&gt;"/></iq>"#,
    "<message from='&#x263A;@example.test/&amp;res' to  =  'proxy.example.test' xml:lang='de'><body>gr\u{fc}\u{df}e &lt;3</body></message>",
    "<c:iq xmlns:c='jabber:component:accept' type='result' id='p' to='a@b/c' from='proxy.example.test'/>",
    "<message to='proxy.example.test' from='a@b/c'><body><![CDATA[</iq></message><iq>]]></body></message>",
    "<presence\n\tfrom='impl@example.test/a'\r\n to='proxy.example.test' type='unavailable' />",
    "<handshake/>",
    " \n\t\r\n ",
    "&#32;<![CDATA[ ]]>",
    "<stream:error><conflict xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>",
    "<iq type='get' id='deep'><a><b><c><d xmlns:p='urn:p'><p:e p:x='1' x='2'/></d></c></b></a></iq>",
    "<message to='a&#x9;b&#13;&#10;c' from='x\r\ny\tz'><body>\u{1F600} ]] ] &#x1F600;</body></message>",
    "</stream:stream>",
];

/// Bytes worth inserting: markup, references, whitespace, bad bytes.
const PIECES: &[&[u8]] = &[
    b"<",
    b">",
    b"/",
    b"'",
    b"\"",
    b"=",
    b"&",
    b";",
    b" ",
    b"\r",
    b"\n",
    b"\t",
    b"]]>",
    b"]",
    b"<!--",
    b"-->",
    b"<?xml ",
    b"?>",
    b"<!DOCTYPE",
    b"<![CDATA[",
    b"&amp;",
    b"&#",
    b"&#x",
    b"xmlns",
    b"xmlns:p='u'",
    b"p:",
    b":",
    b"to='x'",
    b"from",
    b"\xff",
    b"\xc3",
    b"\xe2\x82",
    b"\x00",
    b"\x01",
    b"\xef\xbf\xbe",
    b"\xc3\xa9",
    b"stream",
    b"</",
    b"a",
    b"iq",
    b"x",
];

fn mutate(rng: &mut Rng, base: &[u8]) -> Vec<u8> {
    let mut v = base.to_vec();
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(v.len() + 1);
        match rng.below(3) {
            0 => {
                let p = PIECES[rng.below(PIECES.len())];
                v.splice(at..at, p.iter().copied());
            }
            1 if at < v.len() => {
                let n = 1 + rng.below(4).min(v.len() - at - 1);
                v.drain(at..at + n);
            }
            _ if at < v.len() => v[at] = PIECES[rng.below(PIECES.len())][0],
            _ => {}
        }
    }
    v
}

fn stream(rng: &mut Rng) -> Vec<u8> {
    let mut s = if rng.below(4) == 0 {
        HEADER
            .split_once("?>")
            .map_or(HEADER, |(_, h)| h)
            .to_owned()
    } else {
        HEADER.to_owned()
    };
    for _ in 0..1 + rng.below(4) {
        s.push_str(SEEDS[rng.below(SEEDS.len())]);
    }
    s.into_bytes()
}

#[test]
fn seeds_frame_the_same() {
    for seed in SEEDS {
        let input = format!("{HEADER}{seed}");
        for sizes in [&[input.len()][..], &[1], &[3], &[7, 2]] {
            if let Some(d) = differ(input.as_bytes(), sizes, FramerLimits::default()) {
                panic!("{seed:?} sizes {sizes:?}: {d}");
            }
        }
    }
}

/// Mutated streams, several chunkings and limits. Prints the first
/// failing input in a form to paste into a test.
#[test]
fn mutated_streams_frame_the_same() {
    let mut rng = Rng(0x5eed_f00d);
    let limits = [
        FramerLimits::default(),
        FramerLimits {
            max_stanza_bytes: 200,
            max_depth: 2,
        },
    ];
    // FAST_DIFF_CASES=… runs more of them (and FAST_DIFF_SEED another set).
    let cases = std::env::var("FAST_DIFF_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4000);
    if let Some(seed) = std::env::var("FAST_DIFF_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        rng = Rng(seed);
    }
    for n in 0..cases {
        let base = stream(&mut rng);
        let input = mutate(&mut rng, &base);
        let l = limits[n % limits.len()];
        let cut = 1 + rng.below(input.len());
        for sizes in [&[input.len()][..], &[1], &[cut, input.len()], &[5, 3]] {
            if let Some(d) = differ(&input, sizes, l) {
                panic!(
                    "case {n}, sizes {sizes:?}, limits {l:?}: {d}\ninput: {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
        }
    }
}
