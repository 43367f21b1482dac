//! `witnessctl check-topology`: which single losses a placement survives.
//!
//! The witnesses decide by majority of voters, so what a layout survives is
//! arithmetic over where the voters are: losing a failure domain (a site)
//! loses every voter placed there at once. For each site and each voter
//! this module answers, in plain words, whether a majority of voters
//! remains — and so whether the cluster can still decide, keep the active
//! site's leases alive and, when the lost site was the active mail site,
//! activate the other one.
//!
//! The classic mistake it exists to catch is the 2+1 layout: two voters in
//! one mail site, one in the other. Losing the site with two voters leaves
//! one of three, no majority, and the surviving mail site can never be
//! activated — exactly the disaster the witness was installed for.
//!
//! Input is the same from a live cluster (`members` and the policy's
//! `[[site]]` list) or from files (a witness's `[[peer]]` list and
//! optionally the cluster policy), so a layout can be checked before it is
//! built.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use serde_json::{Value, json};

/// A voting witness and the failure domain (site) it lives in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    pub id: u64,
    pub name: String,
    pub site: String,
}

/// What losing one thing does to the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    /// `site` or `witness`.
    pub kind: &'static str,
    /// The site's or the witness's name.
    pub what: String,
    /// Voters left, out of how many, and the majority needed.
    pub voters_left: usize,
    pub voters: usize,
    pub majority: usize,
    pub survives: bool,
    /// The consequence, in plain words.
    pub words: String,
}

/// The whole answer: every single loss, and warnings about the layout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub losses: Vec<Loss>,
    pub warnings: Vec<String>,
}

impl Report {
    /// Whether every single site and witness loss leaves a majority.
    pub fn survives_every_single_loss(&self) -> bool {
        self.losses.iter().all(|l| l.survives)
    }
}

/// Judge a layout: `voters` with their sites, `mail_sites` the sites that
/// run mail services (from the policy; empty when unknown).
pub fn analyze(voters: &[Voter], mail_sites: &[String]) -> Report {
    let n = voters.len();
    let majority = n / 2 + 1;
    let mut by_site: BTreeMap<&str, Vec<&Voter>> = BTreeMap::new();
    for v in voters {
        by_site.entry(v.site.as_str()).or_default().push(v);
    }
    for s in mail_sites {
        by_site.entry(s.as_str()).or_default();
    }
    let names = |vs: &[&Voter]| {
        vs.iter()
            .map(|v| format!("{} (id {})", v.name, v.id))
            .collect::<Vec<_>>()
            .join(", ")
    };

    let mut warnings = Vec::new();
    if n == 0 {
        warnings.push("no voters: the cluster cannot decide anything".to_string());
    } else if n.is_multiple_of(2) {
        warnings.push(format!(
            "{n} voters: an even count tolerates no more failures than {} voters and splits \
             evenly in a partition; use an odd number (3 or 5)",
            n - 1
        ));
    }
    for (site, vs) in &by_site {
        if vs.len() > 1 {
            warnings.push(format!(
                "voters {} share site {site}: losing {site} loses {} of {n} votes at once; \
                 place each voter in its own failure domain (the third one outside both mail \
                 sites)",
                names(vs),
                vs.len()
            ));
        }
    }
    let voter_sites: Vec<&str> = by_site
        .iter()
        .filter(|(_, vs)| !vs.is_empty())
        .map(|(s, _)| *s)
        .collect();
    if !mail_sites.is_empty()
        && n > 0
        && voter_sites
            .iter()
            .all(|s| mail_sites.iter().any(|m| m.as_str() == *s))
    {
        warnings.push(
            "every voter is in a mail site: with no voter in a third failure domain, one of the \
             two mail sites holds a majority, and losing it stops every failover"
                .to_string(),
        );
    }
    let other_mail = |site: &str| -> Vec<&str> {
        mail_sites
            .iter()
            .map(String::as_str)
            .filter(|m| *m != site)
            .collect()
    };
    let mut losses = Vec::new();
    for (site, vs) in &by_site {
        let left = n - vs.len();
        let survives = n > 0 && left >= majority;
        let is_mail = mail_sites.iter().any(|m| m == site);
        let lost = if vs.is_empty() {
            "no witness".to_string()
        } else {
            format!("witness {}", names(vs))
        };
        let words = if survives {
            let then = if is_mail {
                match other_mail(site).as_slice() {
                    [] => "if it was active, no other mail site is configured to take over"
                        .to_string(),
                    others => format!(
                        "if it was the active mail site, the witnesses activate {} after its \
                         leases run out",
                        others.join(" or ")
                    ),
                }
            } else {
                "no mail site is lost; the active site keeps its leases".to_string()
            };
            format!(
                "survives: loses {lost}; {left} of {n} voters remain (majority {majority}); {then}"
            )
        } else {
            let then = if is_mail && !other_mail(site).is_empty() {
                format!(
                    "no leader, so {} can never be activated and every site's leases run out",
                    other_mail(site).join(" or ")
                )
            } else {
                "no leader: every site's leases run out and the mail service stops everywhere"
                    .to_string()
            };
            format!(
                "DOES NOT SURVIVE: loses {lost}; {left} of {n} voters remain, below the majority \
                 of {majority}; {then}"
            )
        };
        losses.push(Loss {
            kind: "site",
            what: site.to_string(),
            voters_left: left,
            voters: n,
            majority,
            survives,
            words,
        });
    }
    for v in voters {
        let left = n - 1;
        let survives = left >= majority;
        let words = if survives {
            format!(
                "survives: {left} of {n} voters remain (majority {majority}); nothing fails over"
            )
        } else {
            format!(
                "DOES NOT SURVIVE: {left} of {n} voters remain, below the majority of \
                 {majority}; no leader, and every site's leases run out"
            )
        };
        losses.push(Loss {
            kind: "witness",
            what: format!("{} (id {}, {})", v.name, v.id, v.site),
            voters_left: left,
            voters: n,
            majority,
            survives,
            words,
        });
    }
    Report { losses, warnings }
}

/// The report for people.
pub fn table(r: &Report) -> String {
    let mut out = String::new();
    for l in &r.losses {
        out.push_str(&format!("lose {} {}: {}\n", l.kind, l.what, l.words));
    }
    if !r.warnings.is_empty() {
        out.push('\n');
        for w in &r.warnings {
            out.push_str(&format!("WARNING: {w}\n"));
        }
    }
    out.push('\n');
    out.push_str(if r.survives_every_single_loss() {
        "verdict: survives the loss of any one site or any one witness\n"
    } else {
        "verdict: NOT SAFE — some single loss leaves no majority (see above)\n"
    });
    out
}

/// The report for scripts.
pub fn json(r: &Report) -> Value {
    json!({
        "survives_every_single_loss": r.survives_every_single_loss(),
        "losses": r.losses.iter().map(|l| json!({
            "kind": l.kind, "what": l.what, "survives": l.survives,
            "voters_left": l.voters_left, "voters": l.voters, "majority": l.majority,
            "explanation": l.words,
        })).collect::<Vec<_>>(),
        "warnings": r.warnings,
    })
}

/// The mail sites named by a cluster policy's `[[site]]` tables.
pub fn policy_sites(toml_text: &str) -> Result<Vec<String>, String> {
    #[derive(Deserialize)]
    struct Policy {
        #[serde(default)]
        site: Vec<Site>,
    }
    #[derive(Deserialize)]
    struct Site {
        name: String,
    }
    let p: Policy = toml::from_str(toml_text).map_err(|e| e.to_string())?;
    Ok(p.site.into_iter().map(|s| s.name).collect())
}

/// The voters of a witness config file's `[[peer]]` list.
pub fn config_voters(path: &Path) -> Result<Vec<Voter>, String> {
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        peer: Vec<Peer>,
    }
    #[derive(Deserialize)]
    struct Peer {
        id: u64,
        name: String,
        site: String,
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let c: Config =
        toml::from_str(&text).map_err(|e| format!("{} is not valid TOML: {e}", path.display()))?;
    if c.peer.is_empty() {
        return Err(format!(
            "{} has no [[peer]] entries: give a witness config (witness.toml) that lists the \
             voters",
            path.display()
        ));
    }
    Ok(c.peer
        .into_iter()
        .map(|p| Voter {
            id: p.id,
            name: p.name,
            site: p.site,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(layout: &[(&str, &str)]) -> Vec<Voter> {
        layout
            .iter()
            .enumerate()
            .map(|(i, (name, site))| Voter {
                id: i as u64 + 1,
                name: name.to_string(),
                site: site.to_string(),
            })
            .collect()
    }

    fn mail() -> Vec<String> {
        vec!["dc-a".into(), "dc-b".into()]
    }

    /// One voter per site, the third outside the mail sites: every single
    /// loss is survived, and losing a mail site activates the other one.
    #[test]
    fn three_sites_survive_every_single_loss() {
        let r = analyze(
            &voters(&[("w1", "dc-a"), ("w2", "dc-b"), ("w3", "dc-c")]),
            &mail(),
        );
        assert!(r.survives_every_single_loss(), "{}", table(&r));
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        let a = r.losses.iter().find(|l| l.what == "dc-a").expect("dc-a");
        assert!(a.words.contains("activate dc-b"), "{}", a.words);
        assert_eq!(r.losses.len(), 6);
    }

    /// The 2+1 layout loses its majority with the double site, and says so.
    #[test]
    fn two_plus_one_is_flagged() {
        let r = analyze(
            &voters(&[("w1", "dc-a"), ("w2", "dc-a"), ("w3", "dc-b")]),
            &mail(),
        );
        assert!(!r.survives_every_single_loss());
        let a = r.losses.iter().find(|l| l.what == "dc-a").expect("dc-a");
        assert!(!a.survives);
        assert!(
            a.words.contains("dc-b can never be activated"),
            "{}",
            a.words
        );
        let b = r.losses.iter().find(|l| l.what == "dc-b").expect("dc-b");
        assert!(b.survives);
        assert!(r.warnings.iter().any(|w| w.contains("share site dc-a")));
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("every voter is in a mail site"))
        );
        assert!(table(&r).contains("NOT SAFE"));
        assert_eq!(json(&r)["survives_every_single_loss"], false);
    }

    /// Even voter counts and empty layouts are warned about.
    #[test]
    fn even_and_empty_layouts_warn() {
        let r = analyze(
            &voters(&[
                ("w1", "dc-a"),
                ("w2", "dc-b"),
                ("w3", "dc-c"),
                ("w4", "dc-d"),
            ]),
            &mail(),
        );
        assert!(r.warnings.iter().any(|w| w.contains("even count")));
        let r = analyze(&[], &mail());
        assert!(!r.survives_every_single_loss());
        assert!(r.warnings.iter().any(|w| w.contains("no voters")));
    }

    /// A single voter survives nothing.
    #[test]
    fn one_voter_survives_no_loss() {
        let r = analyze(&voters(&[("w1", "dc-c")]), &mail());
        assert!(!r.survives_every_single_loss());
        let w = r.losses.iter().find(|l| l.kind == "witness").expect("w1");
        assert!(!w.survives);
    }

    /// Policy and config files are read for their sites and peers.
    #[test]
    fn files_are_read() {
        let sites = policy_sites(
            "[lease]\nttl = \"8s\"\n[[site]]\nname = \"dc-a\"\n[[site]]\nname = \"dc-b\"\n",
        )
        .expect("policy");
        assert_eq!(sites, mail());
        assert!(policy_sites("[[site]]\nnam = 1").is_err());
        let dir = std::env::temp_dir().join(format!("topo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("w.toml");
        std::fs::write(
            &f,
            "[node]\nid = 1\n[[peer]]\nid = 1\nname = \"w1\"\naddr = \"x:1\"\nsite = \"dc-a\"\n",
        )
        .expect("write");
        let v = config_voters(&f).expect("voters");
        assert_eq!(v[0].site, "dc-a");
        std::fs::write(&f, "[node]\nid = 1\n").expect("write");
        assert!(
            config_voters(&f)
                .expect_err("no peers")
                .contains("no [[peer]]")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
