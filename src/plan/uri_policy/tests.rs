//! Table tests: which URIs the controller uses, and what it says about the others.

use super::*;

fn limits() -> Limits {
    Limits {
        allow_test_driver: false,
        socket_dirs: vec!["/run/libvirt".into(), "/tmp/ferry-lab-1".into()],
        credential_dirs: vec!["/etc/ferry/pki".into()],
        own_credentials_dir: Some("/tmp/ferry-pki".into()),
    }
}

struct Case {
    name: &'static str,
    uri: &'static str,
    role: Role,
    terms: PoolTerms,
    test_driver: bool,
    /// `None`: allowed; `Some((reason, needle))`: refused, the first problem with `reason` and
    /// the message containing `needle`.
    refused: Option<(&'static str, &'static str)>,
}

const PLAIN: PoolTerms = PoolTerms {
    skip_host_verification: false,
    credentials_secret: false,
};
const INSECURE: PoolTerms = PoolTerms {
    skip_host_verification: true,
    credentials_secret: false,
};
const SECRET: PoolTerms = PoolTerms {
    skip_host_verification: false,
    credentials_secret: true,
};

fn case(
    name: &'static str,
    uri: &'static str,
    refused: Option<(&'static str, &'static str)>,
) -> Case {
    Case {
        name,
        uri,
        role: Role::Controller,
        terms: PLAIN,
        test_driver: false,
        refused,
    }
}

const T: &str = "TransportNotAllowed";
const P: &str = "URIParameterNotAllowed";
const D: &str = "PathNotAllowed";

#[test]
fn controller_uris() {
    let cases = vec![
        case(
            "TLS with a placeholder host",
            "qemu+tls://{address}/system",
            None,
        ),
        case(
            "plain qemu with a host means TLS",
            "qemu://{address}/system",
            None,
        ),
        case(
            "plain qemu without a host is the local socket",
            "qemu:///system",
            None,
        ),
        case(
            "SSH with a user and an annotation",
            "qemu+ssh://root@{annotation:ferry.dev/libvirt-host}/system",
            None,
        ),
        case(
            "libssh with key auth",
            "qemu+libssh://root@{address}/system?sshauth=privkey&known_hosts_verify=auto",
            None,
        ),
        case("libssh2", "qemu+libssh2://root@{address}:2222/system", None),
        case("TCP in labs", "qemu+tcp://{address}:16509/system", None),
        case(
            "unix socket in an allowed directory",
            "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
            None,
        ),
        case(
            "unix socket per host under a literal allowed directory",
            "qemu+unix:///system?socket=/tmp/ferry-lab-1/{label:ferry.dev/e2e-lab-host}/run/libvirt/libvirt-sock",
            None,
        ),
        case(
            "mounted PKI directory",
            "qemu+tls://{address}/system?pkipath=/etc/ferry/pki/rack1",
            None,
        ),
        case(
            "mode and proxy",
            "qemu+ssh://{address}/system?mode=direct&proxy=native&no_tty=1",
            None,
        ),
        case(
            "no_verify=0 is the default, and fine",
            "qemu+tls://{address}/system?no_verify=0",
            None,
        ),
        case(
            "the ext transport",
            "qemu+ext:///system?command=/path/to/script",
            Some((T, "transport ext runs a local program")),
        ),
        case(
            "ext with another driver",
            "lxc+ext:///system",
            Some((T, "transport ext")),
        ),
        case(
            "command= with SSH runs a local program",
            "qemu+ssh://{address}/system?command=/tmp/evil",
            Some((P, "command= names a program")),
        ),
        case(
            "an unknown transport",
            "qemu+http://{address}/system",
            Some((T, "transport \"http\" is not allowed")),
        ),
        case(
            "another driver",
            "lxc:///system",
            Some((T, "driver \"lxc\" is not allowed")),
        ),
        case(
            "xen over TLS",
            "xen+tls://{address}/system",
            Some((T, "driver \"xen\"")),
        ),
        case(
            "the test driver without the flag",
            "test:///default",
            Some((T, "--allow-test-driver")),
        ),
        case("not a URI", "h1", Some((T, "not a libvirt URI"))),
        case(
            "the session daemon",
            "qemu:///session",
            Some((T, "/session")),
        ),
        case("no path", "qemu+tls://{address}", Some((T, "path \"\""))),
        case(
            "a socket elsewhere",
            "qemu+unix:///system?socket=/var/lib/other/sock",
            Some((
                D,
                "outside the controller's allowed socket directories (/run/libvirt, /tmp/ferry-lab-1)",
            )),
        ),
        case(
            "a socket that is the directory itself",
            "qemu+unix:///system?socket=/run/libvirt",
            Some((D, "outside")),
        ),
        case(
            "a socket with ..",
            "qemu+unix:///system?socket=/run/libvirt/../../etc/x",
            Some((D, ". or .. segment")),
        ),
        case(
            "a placeholder inside the directory part",
            "qemu+unix:///system?socket=/tmp/{label:dir}/sock",
            Some((D, "without placeholders")),
        ),
        case(
            "a relative socket",
            "qemu+unix:///system?socket=sock",
            Some((D, "not an absolute path")),
        ),
        case(
            "socket with TLS",
            "qemu+tls://{address}/system?socket=/run/libvirt/s",
            Some((P, "does not apply to transport tls")),
        ),
        case(
            "pkipath elsewhere",
            "qemu+tls://{address}/system?pkipath=/home/me/pki",
            Some((D, "credentials directories (/etc/ferry/pki)")),
        ),
        case(
            "pkipath pointing at another namespace's credentials",
            "qemu+tls://{address}/system?pkipath=/tmp/ferry-pki/other_libvirt-tls_123",
            Some((D, "where ferry keeps credentials from Secrets")),
        ),
        case(
            "keyfile elsewhere",
            "qemu+libssh://{address}/system?keyfile=/root/.ssh/id_rsa",
            Some((D, "outside")),
        ),
        case(
            "keyfile with TLS",
            "qemu+tls://{address}/system?keyfile=/etc/ferry/pki/k",
            Some((P, "does not apply")),
        ),
        case(
            "known_hosts inside",
            "qemu+libssh://{address}/system?known_hosts=/etc/ferry/pki/ssh/known_hosts",
            None,
        ),
        case(
            "no_verify=1",
            "qemu+tls://{address}/system?no_verify=1",
            Some((P, "insecureSkipHostVerification")),
        ),
        case(
            "known_hosts_verify=ignore",
            "qemu+libssh://{address}/system?known_hosts_verify=ignore",
            Some((P, "insecureSkipHostVerification")),
        ),
        case(
            "no_verify=1 with the ssh program",
            "qemu+ssh://root@{address}/system?no_verify=1",
            Some((P, "insecureSkipHostVerification")),
        ),
        case(
            "no_verify=0 with the ssh program",
            "qemu+ssh://root@{address}/system?no_verify=0",
            None,
        ),
        case(
            "no_verify with libssh, which has known_hosts_verify",
            "qemu+libssh://{address}/system?no_verify=1",
            Some((P, "does not apply to transport libssh")),
        ),
        case(
            "no_verify with a placeholder",
            "qemu+tls://{address}/system?no_verify={label:x}",
            Some((P, "takes no placeholder")),
        ),
        case(
            "no_verify=yes",
            "qemu+tls://{address}/system?no_verify=yes",
            Some((P, "not one of 0, 1")),
        ),
        case(
            "an unknown parameter",
            "qemu+ssh://{address}/system?netcat=/bin/nc",
            Some((P, "\"netcat\" is not allowed")),
        ),
        case(
            "name= is not needed",
            "qemu+tls://{address}/system?name=qemu:///session",
            Some((P, "\"name\" is not allowed")),
        ),
        case(
            "a repeated parameter",
            "qemu+unix:///system?socket=/run/libvirt/a&socket=/etc/x",
            Some((P, "given twice")),
        ),
        case(
            "percent-encoding",
            "qemu+unix:///system?socket=%2Fetc%2Fx",
            Some((P, "may not contain '%'")),
        ),
        case(
            "a ; separator",
            "qemu+unix:///system?socket=/run/libvirt/s;command=/x",
            Some((P, "';'")),
        ),
        case(
            "a + that libvirt reads as a space",
            "qemu+tls://{address}/system?pkipath=/etc/ferry/pki/a+b",
            Some((P, "'+'")),
        ),
        case(
            "a parameter without a value",
            "qemu+tls://{address}/system?no_verify",
            Some((P, "needs a value")),
        ),
        case(
            "a bad sshauth",
            "qemu+libssh://{address}/system?sshauth=gssapi",
            Some((P, "methods are")),
        ),
        Case {
            name: "no_verify=1 with the pool's explicit consent",
            uri: "qemu+tls://{address}/system?no_verify=1",
            role: Role::Controller,
            terms: INSECURE,
            test_driver: false,
            refused: None,
        },
        Case {
            name: "the ssh program accepting a new host key, with consent",
            uri: "qemu+ssh://root@{address}/system?no_verify=1",
            role: Role::Controller,
            terms: INSECURE,
            test_driver: false,
            refused: None,
        },
        Case {
            name: "known_hosts_verify=ignore with consent",
            uri: "qemu+libssh://{address}/system?known_hosts_verify=ignore",
            role: Role::Controller,
            terms: INSECURE,
            test_driver: false,
            refused: None,
        },
        Case {
            name: "pkipath in the template and a credentials Secret",
            uri: "qemu+tls://{address}/system?pkipath=/etc/ferry/pki/rack1",
            role: Role::Controller,
            terms: SECRET,
            test_driver: false,
            refused: Some((P, "give them in one place")),
        },
        Case {
            name: "a Secret and a socket are fine together",
            uri: "qemu+unix:///system?socket=/run/libvirt/libvirt-sock",
            role: Role::Controller,
            terms: SECRET,
            test_driver: false,
            refused: None,
        },
        Case {
            name: "the test driver with the flag",
            uri: "test:///tmp/scale/h1.xml",
            role: Role::Controller,
            terms: PLAIN,
            test_driver: true,
            refused: None,
        },
        Case {
            name: "the test driver takes no parameters",
            uri: "test:///default?socket=/x",
            role: Role::Controller,
            terms: PLAIN,
            test_driver: true,
            refused: Some((P, "take no parameters")),
        },
        Case {
            name: "peer: TCP to the destination",
            uri: "qemu+tcp://{address}/system",
            role: Role::Peer,
            terms: PLAIN,
            test_driver: false,
            refused: None,
        },
        Case {
            name: "peer: TLS by default",
            uri: "qemu://{address}/system",
            role: Role::Peer,
            terms: PLAIN,
            test_driver: false,
            refused: None,
        },
        Case {
            name: "peer: a unix socket is the source host itself",
            uri: "qemu+unix:///system",
            role: Role::Peer,
            terms: PLAIN,
            test_driver: false,
            refused: Some((T, "transport \"unix\" is not allowed")),
        },
        Case {
            name: "peer: ext would run a program on the source host",
            uri: "qemu+ext:///system?command=/x",
            role: Role::Peer,
            terms: PLAIN,
            test_driver: false,
            refused: Some((T, "transport ext")),
        },
        Case {
            name: "peer: pkipath names a file of the controller's",
            uri: "qemu+tls://{address}/system?pkipath=/etc/ferry/pki/rack1",
            role: Role::Peer,
            terms: PLAIN,
            test_driver: false,
            refused: Some((P, "source host uses its own libvirt client configuration")),
        },
        Case {
            name: "peer: the test driver never",
            uri: "test:///default",
            role: Role::Peer,
            terms: PLAIN,
            test_driver: true,
            refused: Some((T, "driver \"test\"")),
        },
    ];
    for c in cases {
        let l = Limits {
            allow_test_driver: c.test_driver,
            ..limits()
        };
        match (c.refused, check(c.uri, c.role, &l, c.terms)) {
            (None, Ok(())) => {}
            (Some((reason, needle)), Err(problems)) => {
                assert_eq!(problems[0].reason, reason, "{}: {problems:?}", c.name);
                assert!(
                    problems[0].message.contains(needle),
                    "{}: {:?} lacks {needle:?}",
                    c.name,
                    problems[0].message
                );
            }
            (want, got) => panic!("{}: want {want:?}, got {got:?}", c.name),
        }
    }
}

#[test]
fn every_problem_is_listed_and_summed_up() {
    let problems = check(
        "qemu+tls://{address}/session?no_verify=1&netcat=/x",
        Role::Controller,
        &limits(),
        PLAIN,
    )
    .unwrap_err();
    assert_eq!(problems.len(), 3, "{problems:?}");
    let (reason, message) = summary(&problems);
    assert_eq!(reason, "TransportNotAllowed");
    for needle in ["/session", "no_verify=1", "netcat"] {
        assert!(message.contains(needle), "{message}");
    }
}

#[test]
fn a_filled_template_stays_allowed() {
    // What the template check allows, the rendered URI passes too (placeholder values are host
    // names or addresses); and a rendered URI is checked the same way.
    let l = limits();
    assert_eq!(
        check(
            "qemu+unix:///system?socket=/tmp/ferry-lab-1/h1/run/libvirt/libvirt-sock",
            Role::Controller,
            &l,
            PLAIN
        ),
        Ok(())
    );
    assert!(
        check(
            "qemu+unix:///system?socket=/tmp/ferry-lab-2/h1/libvirt-sock",
            Role::Controller,
            &l,
            PLAIN
        )
        .is_err()
    );
}

#[test]
fn limits_are_checked_at_start() {
    assert_eq!(Limits::default().validate(), Ok(()));
    let bad = Limits {
        socket_dirs: vec!["run/libvirt".into()],
        ..Limits::default()
    };
    assert!(bad.validate().unwrap_err().contains("not an absolute path"));
    let root = Limits {
        credential_dirs: vec!["/".into()],
        ..Limits::default()
    };
    assert!(root.validate().is_err());
}

#[test]
fn uris_that_would_run_a_program_on_a_client() {
    for (uri, runs) in [
        ("qemu+tls://10.0.0.1/system", false),
        ("qemu+ssh://root@h1/system?keyfile=/k", false),
        ("qemu:///system", false),
        ("qemu+ext:///system?command=/x", true),
        ("qemu+ext:///system", true),
        ("qemu+ssh://h1/system?command=/tmp/evil", true),
        ("qemu+ssh://h1/system?a=b;command=/tmp/evil", true),
        ("qemu+ssh://h1/system?comman%64=/tmp/evil", true),
        ("not a uri", false),
    ] {
        assert_eq!(runs_a_program(uri).is_some(), runs, "{uri}");
    }
}
